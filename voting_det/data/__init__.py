"""Data: the synthetic NT generator, the public-set converter, registration
of the converted sets in detectron2's catalogs, and the ultrasound mapper."""
from .datasets import (
    BUILTIN_NT_SETS,
    NT_EVALUATOR_TYPE,
    load_nt_coco_json,
    register_all_nt,
    register_nt_coco,
)
from .mapper import RandomSpeckle, build_ultrasound_augmentation, build_ultrasound_mapper
from .spreadsheet import (
    SPREADSHEET_COLUMNS,
    SpreadsheetError,
    read_object_detection_xlsx,
    write_object_detection_xlsx,
)

register_all_nt()
