"""Full-ranking evaluation (spec C): not written yet.

Session-parallel evaluation against all training items with explicit tie modes, Recall@K and MRR@K,
arrives with the faithful-core issue (#3). Nothing here runs yet.
"""
