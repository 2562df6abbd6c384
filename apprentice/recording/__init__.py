"""Episode recording core (no rclpy): rosbag2 MCAP bags, crash recovery, quality gate, index.

The recorder node subscribes with raw=True and hands the wire CDR bytes and receive times to
an `EpisodeWriter`; `recover` repairs a bag whose writer was killed; `QualityTracker` /
`assess_bag` give each episode a `QualityVerdict`; `DatasetIndex` lists the episodes.
"""

from .episode import EpisodeSummary, EpisodeWriter, WriterConfig
from .index import DatasetIndex, EpisodeEntry
from .msgdefs import STAMPED_TYPES, header_stamp_ns, message_definition
from .quality import (
    QualityConfig,
    QualityTracker,
    QualityVerdict,
    TopicQuality,
    TopicSpec,
    assess_bag,
)
from .recover import RecoveryReport, needs_recovery, recover

__all__ = [
    "STAMPED_TYPES",
    "DatasetIndex",
    "EpisodeEntry",
    "EpisodeSummary",
    "EpisodeWriter",
    "QualityConfig",
    "QualityTracker",
    "QualityVerdict",
    "RecoveryReport",
    "TopicQuality",
    "TopicSpec",
    "WriterConfig",
    "assess_bag",
    "header_stamp_ns",
    "message_definition",
    "needs_recovery",
    "recover",
]
