"""`vestnik soak`: an hour of mixed faults under load, every notice accounted for."""
