"""edgellm_ros: a small LLM/VLM runtime behind a ROS 2 lifecycle node.

Importing the package loads nothing heavy: the runtime lives in submodules
(``edgellm_ros.runtime.engine``, ...), the ROS layer in ``edgellm_ros.ros``, and the
rosidl-generated interfaces in ``edgellm_ros.msg`` / ``edgellm_ros.srv``.
"""

import os as _os
import sys as _sys

# rosidl generates edgellm_ros.msg / edgellm_ros.srv (and their compiled type
# support) into the colcon install tree (scripts/setup.sh builds it into
# <repo>/install), which also holds a copy of this package. When this file is
# imported from a built source checkout, that installed package folder is
# appended to __path__: every module that exists here comes from the source
# tree (edits apply without a rebuild); the generated ones, which exist only in
# install/, are found there. In an installed copy (colcon on a robot, pip) no
# such folder exists and this is a no-op. (Using the generated types in a node
# also needs install/lib on LD_LIBRARY_PATH, as with any ROS workspace:
# `source scripts/env.sh` sets it.)
_py = 'python%d.%d' % _sys.version_info[:2]
_install = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))),
                         'install')
for _rel in ('lib/%s/site-packages' % _py, 'local/lib/%s/dist-packages' % _py,
             'lib/%s/dist-packages' % _py):
    _d = _os.path.join(_install, _rel, __name__)
    if _os.path.isdir(_os.path.join(_d, 'msg')) and _d not in __path__:
        __path__.append(_d)
        break
