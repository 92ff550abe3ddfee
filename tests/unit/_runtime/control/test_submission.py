"""What `raystream submit` checks before anything reaches the cluster."""
import pytest

from raystream._runtime.control.submission import defines_job
from raystream.errors import ConfigError


@pytest.mark.parametrize("source, found", [
    ("import raystream as rs\njob = rs.Job('a')\n", True),
    ("import raystream as rs\njob: rs.Job = rs.Job('a')\n", True),
    ("import raystream as rs\npipeline = rs.Job('a')\n", False),
    ("def make():\n    job = 1\n    return job\n", False),  # only a module-level job counts
])
def test_a_job_file_must_assign_job_at_module_level(tmp_path, source, found):
    path = tmp_path / "j.py"
    path.write_text(source)
    assert defines_job(str(path)) is found


def test_a_job_file_that_is_not_python_is_named(tmp_path):
    path = tmp_path / "j.py"
    path.write_text("job = (\n")
    with pytest.raises(ConfigError, match="j.py is not valid Python"):
        defines_job(str(path))
