"""``lsedu merge``: merge checkpoints larger than memory, one tensor name at a time.

A recipe (YAML, in the style mergekit's users know) names a base model, its
fine-tunes, a method of :mod:`lsedu.methods` and its parameters; the merge
streams and writes a sharded safetensors folder that ``from_pretrained``
loads. The result equals the method's readable lsedu function on the loaded
state dicts, bit for bit. The package, one job a module:

==================  ==========================================================================
module              what
==================  ==========================================================================
``recipe``          the YAML schema, read into a checked :class:`MergeRecipe` (names and
                    defaults from the registry, :mod:`lsedu.methods`)
``io``              checkpoints read lazily (:class:`Checkpoint`), shards and masks written as
                    they come, reads ahead and writes behind in threads
``blocks``          a tensor cut into blocks of rows; each method's steps (drop, trim, combine)
``thresholds``      exact top-k thresholds, streamed: a sample, a bracket, one counting pass
``plan``            :func:`lsedu.merge.plan.plan` (``lsedu merge --plan``): every check from headers and paths, run before
                    the first byte is written, and the estimates of memory, disk and time
``run``             :func:`merge_checkpoints`: the plan, the passes, the output renamed into place
``fused``           the numba fast paths, each tested equal to its readable function
==================  ==========================================================================

>>> from lsedu.merge import merge                      # doctest: +SKIP
>>> report = merge("recipe.yaml", progress=False)      # doctest: +SKIP
"""

from .io import Checkpoint, load_masks, save_masks
from .recipe import MergeRecipe, load_recipe
from .plan import MergePlan
from .run import MergeReport, merge, merge_checkpoints

__all__ = ["Checkpoint", "MergePlan", "MergeRecipe", "MergeReport", "load_masks", "load_recipe", "merge",
           "merge_checkpoints", "save_masks"]
