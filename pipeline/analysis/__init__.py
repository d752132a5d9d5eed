"""After a run: comparing runs (:mod:`.compare`) and testing the privacy claim by attacking it (:mod:`.attacks`).

Reads run folders; imports the task and privacy code to rebuild what a run did, never the
engines or the Flower apps.
"""
