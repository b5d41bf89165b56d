"""The control loop: runs a protocol (propose -> present -> measure -> refine -> propose again).

Its command line (``neurotwin``) mounts every package's commands; nothing imports this package.
"""
