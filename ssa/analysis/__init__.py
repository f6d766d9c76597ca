"""What dependency graphs say together: comparison and clustering of classes, grouping of images by
class, and the faithfulness and stability of rules and selectors (``ssa compare``, ``ssa evaluate``)."""
