"""The stages after the priors (train, render, evaluate, export, diagnose): explicit paths in,
files out; each rule script calls one of them."""
