"""segvol.infer"""
