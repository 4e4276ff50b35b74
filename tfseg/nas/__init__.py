"""Architecture search (NAS): a FasterSeg-style space, a latency table measured in LiteRT, a
controller trained through ``fit()``, and the derived networks' JSON documents.

The derived network itself is built by ``tfseg.models.searched`` (zoo name ``searched``).
"""
