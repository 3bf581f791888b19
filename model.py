"""The GRU4Rec network (spec B3-B4, B8): not written yet.

It arrives with the faithful-core issue (#3): GRU layers, the three embedding modes, dropout on every
layer's output, the official initialisation and the final activations. Nothing here runs yet.
"""
