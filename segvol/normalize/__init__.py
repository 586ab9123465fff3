"""segvol.normalize"""
