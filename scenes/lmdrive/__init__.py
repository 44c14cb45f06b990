"""LMDrive-format routes (CARLA recordings) as contract scenes: a lazy reader and an exact writer.

``layout`` names the folder's files, ``conventions`` holds LMDrive's conventions and coordinate
conversions; reading goes ``files`` -> ``folders`` / ``records`` -> ``instructions`` /
``to_contract`` -> ``scene``; writing goes ``to_lmdrive`` -> ``writer``.
"""

from scenes.lmdrive.scene import LMDriveScene, open_root, open_route
from scenes.lmdrive.writer import write_index, write_route

__all__ = ["LMDriveScene", "open_root", "open_route", "write_index", "write_route"]
