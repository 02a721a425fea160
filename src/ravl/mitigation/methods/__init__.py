"""The built-in mitigation methods, one module per method or family; importing this package
registers them, in the order the mitigation benchmark runs them."""

from ravl.mitigation.methods import standard  # noqa: F401,I001
from ravl.mitigation.methods import vl  # noqa: F401,I001
from ravl.mitigation.methods import spurious_aware  # noqa: F401,I001
from ravl.mitigation.methods import cfr  # noqa: F401,I001
from ravl.mitigation.methods import ravl  # noqa: F401,I001
from ravl.mitigation.methods import decorrelate  # noqa: F401,I001
