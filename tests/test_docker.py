"""What can be checked of the Docker image without a Docker engine."""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile():
    """The Dockerfile, each instruction on one line (continuations joined)."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return re.sub(r"\\\n\s*", " ", f.read())


def instructions(name):
    return [line.split(None, 1)[1] for line in dockerfile().splitlines() if line.startswith(name + " ")]


def test_hadolint_is_clean():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_file_and_every_script_exists():
    for args in instructions("COPY"):
        for src in shlex.split(args)[:-1]:
            assert os.path.exists(os.path.join(ROOT, src)), src
    cmd = instructions("CMD")[0]
    scripts = re.findall(r"[\w/]+\.py", cmd)
    assert scripts == ["train.py"]
    for script in scripts:
        assert os.path.exists(os.path.join(ROOT, script))
    assert "/coco" in cmd and "/trained_models" in cmd


def test_the_image_serves_the_page_on_the_port_the_readme_publishes():
    copied = {f for args in instructions("COPY") for f in shlex.split(args)[:-1]}
    assert "app.py" in copied and "src/" in copied and instructions("EXPOSE") == ["8000"]
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert re.search(r"docker run [^\n]*-p 8000:8000 [^\n]*python app.py [^\n]*--host 0.0.0.0", readme)


def test_base_image_torch_matches_requirements():
    base = instructions("FROM")[0]
    tag_torch = re.match(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", base).group(1)
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pinned = re.search(r"^torch==(\S+)$", f.read(), re.M).group(1)
    assert tag_torch == pinned


def test_dockerignore_keeps_data_checkpoints_logs_and_venv_out():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {".venv", "data", "trained_models", "runs", "demo", "*.pth"} <= ignored
