"""The workflow package: settings sheet, results layout, stage runner, GPU slots and report;
``stages`` holds one module per rule family after the priors."""
