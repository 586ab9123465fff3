"""segvol.model"""
