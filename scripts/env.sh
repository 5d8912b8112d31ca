# Source me:  source scripts/env.sh
# Opens this shell onto the repository's ROS 2 environment, as set up by
# scripts/setup.sh: the .venv (rclpy and the other ROS 2 wheels), the colcon
# install/ of this package (the generated edgellm_ros.msg / edgellm_ros.srv
# and their libraries), and the source tree's Python modules, which take
# precedence over the installed copy (edgellm_ros/__init__.py explains how the
# two meet in one package). Then `python`, `pytest`, `edgellm`, `edgellm_node`
# and your own rclpy clients work directly. Sourcing it twice is harmless.

_edgellm_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd -P)"
if [ ! -f "$_edgellm_root/install/.edgellm-built" ] || [ ! -f "$_edgellm_root/.venv/bin/activate" ]; then
  echo "edgellm_ros: not set up yet; run: bash $_edgellm_root/scripts/setup.sh" >&2
  unset _edgellm_root
  return 1 2>/dev/null || exit 1
fi

# Put $2 in front of the colon-separated variable $1 unless it is there already.
_edgellm_prepend() {
  case ":$(eval "printf '%s' \"\${$1:-}\""):" in
    *":$2:"*) ;;
    *) eval "export $1=\"$2\${$1:+:\$$1}\"" ;;
  esac
}

. "$_edgellm_root/.venv/bin/activate"
# ROS finds packages (share/<pkg>, ament index) through AMENT_PREFIX_PATH: the
# wheels installed theirs into the venv prefix, colcon ours into install/.
_edgellm_prepend AMENT_PREFIX_PATH "$_edgellm_root/.venv"
_edgellm_prepend AMENT_PREFIX_PATH "$_edgellm_root/install"
_edgellm_prepend CMAKE_PREFIX_PATH "$_edgellm_root/.venv"
_edgellm_prepend CMAKE_PREFIX_PATH "$_edgellm_root/install"
# The type support of our interfaces is dlopened by name when first used.
_edgellm_prepend LD_LIBRARY_PATH "$_edgellm_root/install/lib"
_edgellm_prepend PYTHONPATH "$_edgellm_root"
# edgellm_node (what `ros2 run edgellm_ros edgellm_node` runs on a robot).
_edgellm_prepend PATH "$_edgellm_root/install/lib/edgellm_ros"
# DDS discovery stays on this machine (loopback) unless you say otherwise:
# export ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET before sourcing to reach other hosts.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export EDGELLM_ROS_ROOT="$_edgellm_root"
unset _edgellm_root
unset -f _edgellm_prepend
