"""GRU4Rec losses (spec B7): not written yet.

Cross-entropy, xe_logit, TOP1, BPR, TOP1-max and BPR-max with the official normalisation arrive with the
faithful-core issue (#3). Nothing here runs yet.
"""
