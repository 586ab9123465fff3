"""segvol.evaluate"""
