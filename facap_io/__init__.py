"""The project's leaf package: rules every other package shares and none may define again.

- `facap_io.atomic`: writing a file or a whole folder so that a reader (or a crash) never sees it half-written;
- `facap_io.paths`: keeping derived output paths inside their output folder;
- `facap_io.lists`: the one comma-list parser of every command line;
- `facap_io.errors`: the root of the project's error hierarchy.

It imports nothing else of the project, so every package may import it (the model's remote-code files
excepted: they import nothing of ours at all).
"""

from .atomic import check_writable, remove_stale_temporaries, replace_folder, staged_folder, write_file, write_json, write_text
from .errors import FacapError, UnsafePathError
from .lists import comma_list, int_list, parse_list
from .paths import inside, plain_name

__all__ = [
    "FacapError",
    "UnsafePathError",
    "check_writable",
    "comma_list",
    "inside",
    "int_list",
    "parse_list",
    "plain_name",
    "remove_stale_temporaries",
    "replace_folder",
    "staged_folder",
    "write_file",
    "write_json",
    "write_text",
]
