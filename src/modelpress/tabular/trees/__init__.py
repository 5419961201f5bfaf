"""Trees that stand in for ensembles: Born-Again Trees (Breiman & Shang, 1996) and their I/O."""

from modelpress.tabular.trees.born_again import BornAgainTreeClassifier
from modelpress.tabular.trees.cart import fit_cart
from modelpress.tabular.trees.io import TreeFile, load_tree, save_tree
from modelpress.tabular.trees.pruning import leaf_alphas, subtree_errors

__all__ = ["BornAgainTreeClassifier", "TreeFile", "fit_cart", "leaf_alphas", "load_tree", "save_tree", "subtree_errors"]
