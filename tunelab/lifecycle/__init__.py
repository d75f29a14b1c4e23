"""Where tasks, experiments and model servers move between states, and the rules
that decide it: the one place every backend and every room asks."""
