"""CARS synthesis: plan targeted perturbations, edit anatomy-grounded regions, check quality."""
