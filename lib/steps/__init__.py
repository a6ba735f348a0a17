"""Steps: one module per family; lib/steps/registry.py names them, lib/steps/base.py is the contract."""
