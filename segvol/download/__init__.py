"""segvol.download"""
