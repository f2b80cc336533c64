"""Upload validation: one test per rule, each asserting the reason given.

Valid archives come from tests/builders.py; hostile ones are built by hand
here (zip slip, bombs, lying headers, symlinks in tars...).  Validation never
deletes or changes the uploaded file, so every refusal is also checked to
leave it untouched.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from pypicache.uploads import (
    SDIST,
    WHEEL,
    UploadedFile,
    UploadError,
    UploadForm,
    metadata_from_form,
    parse_core_metadata,
    parse_upload,
    validate_upload,
)
from tests.builders import build_sdist, build_wheel, wheel_metadata

PKG_INFO = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nSummary: s\n\n"


# -- helpers ------------------------------------------------------------------


def uploaded(path: Path, filename: str | None = None) -> UploadedFile:
    data = path.read_bytes()
    return UploadedFile(
        path=path,
        filename=path.name if filename is None else filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        blake2_256=hashlib.blake2b(data, digest_size=32).hexdigest(),
    )


def form_for(path: Path, *, filename: str | None = None, **overrides: str | None) -> UploadForm:
    """A form as twine sends it for ``path``; ``overrides`` replace fields
    (None removes one)."""
    upload = uploaded(path, filename)
    filename = upload.filename
    name = overrides.pop("_name", None)
    version = overrides.pop("_version", None)
    if name is None or version is None:
        stem = filename.removesuffix(".whl").removesuffix(".tar.gz")
        stem = stem.removesuffix(".zip")
        guess_name, _, rest = stem.partition("-")
        name = name or guess_name
        version = version or rest.split("-")[0]
    fields: dict[str, str | None] = {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "filetype": WHEEL if filename.endswith(".whl") else SDIST,
        "sha256_digest": upload.sha256,
        "md5_digest": upload.md5,
        "blake2_256_digest": upload.blake2_256,
    }
    fields.update(overrides)
    return UploadForm(
        fields={k: [v] for k, v in fields.items() if v is not None},
        file=upload,
    )


def refused(form: UploadForm, match: str, **kwargs: object) -> UploadError:
    before = form.file.path.read_bytes() if form.file else None
    with pytest.raises(UploadError) as info:
        validate_upload(form, **kwargs)  # type: ignore[arg-type]
    assert info.value.status == 400
    assert match in info.value.reason, info.value.reason
    assert "\n" not in info.value.reason
    if form.file is not None:
        assert form.file.path.read_bytes() == before
    return info.value


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def wheel_members(
    name: str = "pkg",
    version: str = "1.0",
    *,
    metadata: bytes | None = None,
    omit: tuple[str, ...] = (),
    dist_info: str | None = None,
) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    dist_info = dist_info or f"{name}-{version}.dist-info"
    if metadata is None:
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n".encode()
    files = {
        "METADATA": metadata,
        "WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "RECORD": b"",
    }
    members: list[tuple[str | zipfile.ZipInfo, bytes]] = [(f"{name}/__init__.py", b"")]
    members += [(f"{dist_info}/{k}", v) for k, v in files.items() if k not in omit]
    return members


def hostile_wheel(tmp_path: Path, extra: list[tuple[str | zipfile.ZipInfo, bytes]]) -> UploadForm:
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members() + extra)
    return form_for(path)


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tarinfo(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def hostile_sdist(tmp_path: Path, extra: list[tarfile.TarInfo | tuple[str, bytes]]) -> UploadForm:
    base: list[tarfile.TarInfo | tuple[str, bytes]] = [
        ("pkg-1.0/PKG-INFO", PKG_INFO),
        ("pkg-1.0/pkg/__init__.py", b""),
    ]
    return form_for(make_tar(tmp_path / "pkg-1.0.tar.gz", base + extra))


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    return build_wheel(
        tmp_path / "dist",
        "my_pkg",
        "1.0",
        requires_python=">=3.8",
        requires_dist=["attrs>=20", 'tomli; python_version < "3.11"'],
        summary="A package",
    )


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return build_sdist(tmp_path / "dist", "my-pkg", "1.0", requires_python=">=3.9")


# -- valid uploads -------------------------------------------------------------


def test_valid_wheel(wheel: Path) -> None:
    form = form_for(wheel, _name="My.Pkg")
    result = validate_upload(form)
    assert result.project == "my-pkg"
    assert result.version == "1.0"
    assert result.filename == wheel.name
    assert result.filetype == WHEEL
    assert result.python_version == "py3"
    assert result.metadata_bytes == wheel_metadata(wheel)
    assert result.metadata_sha256 == hashlib.sha256(wheel_metadata(wheel)).hexdigest()
    assert result.requires_python == ">=3.8"
    assert result.metadata["summary"] == "A package"
    assert result.metadata["requires_dist"] == ["attrs>=20", 'tomli; python_version < "3.11"']
    assert result.file is form.file


def test_valid_sdist(sdist: Path) -> None:
    result = validate_upload(form_for(sdist))
    assert (result.project, result.version, result.filetype) == ("my-pkg", "1.0", SDIST)
    assert result.python_version == "source"
    assert result.requires_python == ">=3.9"
    assert result.metadata_bytes.startswith(b"Metadata-Version: 2.1\nName: my-pkg\n")


def test_valid_zip_sdist(tmp_path: Path) -> None:
    path = make_zip(
        tmp_path / "pkg-1.0.zip",
        [("pkg-1.0/", b""), ("pkg-1.0/PKG-INFO", PKG_INFO), ("pkg-1.0/setup.py", b"")],
    )
    result = validate_upload(form_for(path))
    assert (result.project, result.filetype, result.metadata_bytes) == ("pkg", SDIST, PKG_INFO)


def test_sdist_symlink_inside_the_tree_is_accepted(tmp_path: Path) -> None:
    form = hostile_sdist(tmp_path, [tarinfo("pkg-1.0/link", tarfile.SYMTYPE, "pkg/__init__.py")])
    assert validate_upload(form).project == "pkg"


def test_equal_versions_spelled_differently_are_accepted(wheel: Path) -> None:
    assert validate_upload(form_for(wheel, version="1.0.0")).version == "1.0"


def test_twine_body_parses_and_validates(tmp_path: Path, wheel: Path) -> None:
    """The body real twine builds (same encoder, same fields) round-trips."""
    requests_toolbelt = pytest.importorskip("requests_toolbelt")
    package = pytest.importorskip("twine.package")
    repository = pytest.importorskip("twine.repository")
    meta = package.PackageFile.from_filename(str(wheel), comment=None).metadata_dictionary()
    data = repository.Repository._convert_metadata_to_list_of_tuples(meta)
    data += [(":action", "file_upload"), ("protocol_version", "1")]
    with open(wheel, "rb") as fp:
        data.append(("content", (wheel.name, fp, "application/octet-stream")))
        encoder = requests_toolbelt.MultipartEncoder(data)
        body = encoder.to_string()
    spool = tmp_path / "spool"
    spool.mkdir()
    form = parse_upload(io.BytesIO(body), encoder.content_type, spool, max_file_bytes=1 << 20)
    result = validate_upload(form)
    assert result.project == "my-pkg"
    assert form.first("sha256_digest") == result.file.sha256
    assert form.fields["requires_dist"] == list(result.metadata["requires_dist"])
    form.discard()
    assert list(spool.iterdir()) == []


# -- the form ------------------------------------------------------------------


@pytest.mark.parametrize("action", [None, "submit", "doc_upload"])
def test_action_must_be_file_upload(wheel: Path, action: str | None) -> None:
    refused(form_for(wheel, **{":action": action}), "':action' must be 'file_upload'")


def test_action_given_twice(wheel: Path) -> None:
    form = form_for(wheel)
    fields = dict(form.fields)
    fields[":action"] = ["file_upload", "file_upload"]
    refused(UploadForm(fields=fields, file=form.file), "given more than once")


def test_protocol_version_must_be_1(wheel: Path) -> None:
    refused(form_for(wheel, protocol_version="2"), "'protocol_version' must be '1'")


def test_protocol_version_may_be_omitted(wheel: Path) -> None:
    assert validate_upload(form_for(wheel, protocol_version=None)).project == "my-pkg"


def test_file_required(wheel: Path) -> None:
    form = form_for(wheel)
    refused(UploadForm(fields=form.fields, file=None), "no file uploaded")


@pytest.mark.parametrize(
    "filename, reason",
    [
        ("../pkg-1.0.tar.gz", "path separator"),
        ("dir/pkg-1.0.tar.gz", "path separator"),
        ("..\\pkg-1.0.tar.gz", "path separator"),
        ("pkg-1.0\x00.tar.gz", "control characters"),
        ("pkg-1.0\r\n.tar.gz", "control characters"),
        ("pkg-1.0\x7f.tar.gz", "control characters"),
        (".pkg-1.0.tar.gz", "must not start with '.'"),
        ("pkg" * 90 + "-1.0.tar.gz", "longer than 255"),
        ("pkgé-1.0.tar.gz", "must be ASCII"),
        ("", "empty filename"),
    ],
)
def test_filename_rules(sdist: Path, filename: str, reason: str) -> None:
    refused(form_for(sdist, filename=filename, _name="my-pkg", _version="1.0"), reason)


@pytest.mark.parametrize(
    "filename",
    [
        "pkg-1.0-py3.11.egg",
        "pkg-1.0.win-amd64.exe",
        "pkg-1.0.msi",
        "pkg-1.0.tar.bz2",
        "pkg-1.0.tar",
        "pkg-1.0.rpm",
        "pkg-1.0.WHL",
    ],
)
def test_only_wheels_and_sdists(sdist: Path, filename: str) -> None:
    form = form_for(sdist, filename=filename, _name="pkg", _version="1.0")
    refused(form, "unsupported file type")


def test_invalid_wheel_filename(wheel: Path) -> None:
    form = form_for(wheel, filename="pkg-1.0.whl", _name="pkg", _version="1.0")
    refused(form, "invalid wheel filename")


def test_invalid_sdist_filename(sdist: Path) -> None:
    form = form_for(sdist, filename="pkg.tar.gz", _name="pkg", _version="1.0")
    refused(form, "invalid sdist filename")


def test_filename_with_unnormalisable_name(sdist: Path) -> None:
    form = form_for(sdist, filename="pkg_-1.0.tar.gz", _name="pkg", _version="1.0")
    refused(form, "invalid project name in filename")


def test_name_required(wheel: Path) -> None:
    refused(form_for(wheel, name=None), "missing 'name' field")


@pytest.mark.parametrize("name", ["-pkg", "pkg!", "my pkg", "pkg\x00", "a" * 201])
def test_name_must_be_valid(wheel: Path, name: str) -> None:
    refused(form_for(wheel, name=name), "invalid project name")


def test_name_must_match_filename(wheel: Path) -> None:
    refused(form_for(wheel, name="other-pkg"), "does not match the filename")


def test_version_required(wheel: Path) -> None:
    refused(form_for(wheel, version=None), "missing 'version' field")


def test_version_must_be_valid(wheel: Path) -> None:
    refused(form_for(wheel, version="not a version"), "invalid version")


def test_version_must_match_filename(wheel: Path) -> None:
    refused(form_for(wheel, version="1.1"), "version '1.1' does not match the filename")


@pytest.mark.parametrize("filetype", ["sdist", "bdist_egg", "bdist_wininst"])
def test_wheel_filetype_must_be_bdist_wheel(wheel: Path, filetype: str) -> None:
    refused(form_for(wheel, filetype=filetype), "expected 'bdist_wheel'")


def test_sdist_filetype_must_be_sdist(sdist: Path) -> None:
    refused(form_for(sdist, filetype="bdist_wheel"), "expected 'sdist'")


def test_filetype_may_be_omitted(sdist: Path) -> None:
    assert validate_upload(form_for(sdist, filetype=None)).filetype == SDIST


@pytest.mark.parametrize("field", ["sha256_digest", "blake2_256_digest", "md5_digest"])
def test_digest_must_match(wheel: Path, field: str) -> None:
    size = 32 if field == "md5_digest" else 64
    refused(form_for(wheel, **{field: "0" * size}), f"{field} does not match the uploaded file")


def test_digest_of_wrong_length_is_refused(wheel: Path) -> None:
    refused(form_for(wheel, sha256_digest="abc"), "sha256_digest does not match")


def test_digests_are_case_insensitive(wheel: Path) -> None:
    form = form_for(wheel)
    upper = form_for(
        wheel,
        sha256_digest=form.file.sha256.upper(),
        blake2_256_digest=form.file.blake2_256.upper(),
        md5_digest=form.file.md5.upper(),
    )
    assert validate_upload(upper).project == "my-pkg"


def test_md5_digest_in_urlsafe_base64(wheel: Path) -> None:
    md5 = hashlib.md5(wheel.read_bytes()).digest()
    encoded = base64.urlsafe_b64encode(md5).rstrip(b"=").decode()
    assert validate_upload(form_for(wheel, md5_digest=encoded)).project == "my-pkg"


def test_no_digest_is_required(wheel: Path) -> None:
    form = form_for(wheel, sha256_digest=None, md5_digest=None, blake2_256_digest=None)
    assert validate_upload(form).project == "my-pkg"


# -- wheels --------------------------------------------------------------------


def test_wheel_must_be_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "pkg-1.0-py3-none-any.whl"
    path.write_bytes(b"this is not a zip file" * 100)
    refused(form_for(path), "not a valid zip archive")


@pytest.mark.parametrize(
    "member",
    ["../evil.py", "pkg/../../evil.py", "/etc/evil", "C:/evil.py", "pkg\\..\\evil.py", "pkg/a\nb"],
)
def test_wheel_unsafe_member_paths(tmp_path: Path, member: str) -> None:
    refused(hostile_wheel(tmp_path, [(member, b"x")]), "has an unsafe path")


def _patch_zip(path: Path, find: bytes, replace: bytes) -> None:
    data = path.read_bytes()
    assert data.count(find) == 2  # local header and central directory
    path.write_bytes(data.replace(find, replace))


def test_wheel_member_with_nul(tmp_path: Path) -> None:
    # zipfile silently cuts names at NUL; the original name must be checked.
    form = hostile_wheel(tmp_path, [("pkg/evil.pyZ.txt", b"x")])
    _patch_zip(form.file.path, b"evil.pyZ", b"evil.py\x00")
    refused(form, "has an unsafe path")


def test_wheel_duplicate_member(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        form = hostile_wheel(tmp_path, [("pkg/__init__.py", b"second")])
    refused(form, "duplicate member")


def test_wheel_symlink_member(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("pkg/link")
    info.external_attr = (0o120777) << 16
    refused(hostile_wheel(tmp_path, [(info, b"/etc/passwd")]), "is a symbolic link")


def test_wheel_device_member(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("pkg/dev")
    info.external_attr = (0o020644) << 16
    refused(hostile_wheel(tmp_path, [(info, b"")]), "is a special file")


def test_wheel_without_dist_info(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", [("pkg/__init__.py", b"")])
    refused(form_for(path), "exactly one .dist-info directory, found 0")


def test_wheel_with_two_dist_infos(tmp_path: Path) -> None:
    extra = [("other-1.0.dist-info/METADATA", b"Name: other\nVersion: 1.0\n")]
    refused(hostile_wheel(tmp_path, extra), "exactly one .dist-info directory, found 2")


def test_wheel_dist_info_must_match(tmp_path: Path) -> None:
    path = make_zip(
        tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(dist_info="other-1.0.dist-info")
    )
    refused(form_for(path), "does not match the filename's name and version")


def test_wheel_dist_info_match_is_normalised(tmp_path: Path) -> None:
    members = wheel_members("My.Pkg", "1.0.0", dist_info="My_Pkg-1.0.0.dist-info")
    path = make_zip(tmp_path / "my_pkg-1.0-py3-none-any.whl", members)
    assert validate_upload(form_for(path, _name="my-pkg", _version="1.0")).project == "my-pkg"


@pytest.mark.parametrize("missing", ["METADATA", "WHEEL", "RECORD"])
def test_wheel_needs_metadata_wheel_and_record(tmp_path: Path, missing: str) -> None:
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(omit=(missing,)))
    refused(form_for(path), f"wheel is missing pkg-1.0.dist-info/{missing}")


def test_wheel_metadata_too_large(tmp_path: Path) -> None:
    metadata = b"Name: pkg\nVersion: 1.0\n\n" + bytes(random.Random(1).randbytes(5000))
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(metadata=metadata))
    refused(form_for(path), "METADATA is larger than 4096 bytes", max_metadata_bytes=4096)


def test_wheel_metadata_compression_bomb(tmp_path: Path) -> None:
    metadata = b"Name: pkg\nVersion: 1.0\n\n" + b"\x00" * (2 * 1024 * 1024)
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(metadata=metadata))
    refused(form_for(path), "METADATA has a suspicious compression ratio")


def _patch_sizes(path: Path, member: str, size: int) -> None:
    """Make the zip's headers understate ``member``'s uncompressed size."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            if data[at + name_offset : at + name_offset + len(name)] == name:
                data[at + size_offset : at + size_offset + 4] = struct.pack("<L", size)
            start = at + 4
    path.write_bytes(bytes(data))


def test_wheel_metadata_header_lies_about_size(tmp_path: Path) -> None:
    metadata = b"Name: pkg\nVersion: 1.0\n\n" + b"x" * 100_000
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(metadata=metadata))
    _patch_sizes(path, "pkg-1.0.dist-info/METADATA", 100)
    refused(form_for(path), "could not read METADATA from the archive")


def test_wheel_encrypted_metadata(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members())
    data = bytearray(path.read_bytes())
    name = b"pkg-1.0.dist-info/METADATA"
    for signature, flags_offset, name_offset in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = -1
        while (at := data.find(signature, at + 1)) >= 0:
            if data[at + name_offset : at + name_offset + len(name)] == name:
                data[at + flags_offset] |= 0x1
    path.write_bytes(bytes(data))
    refused(form_for(path), "METADATA is encrypted")


def test_wheel_too_many_members(tmp_path: Path) -> None:
    extra = [(f"pkg/m{i}.py", b"") for i in range(10)]
    refused(hostile_wheel(tmp_path, extra), "more than 5 members", max_members=5)


def test_zip_end_record_lying_about_member_count(tmp_path: Path) -> None:
    extra = [(f"pkg/m{i}.py", b"") for i in range(10)]
    form = hostile_wheel(tmp_path, extra)
    data = bytearray(form.file.path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 12] = struct.pack("<HH", 1, 1)
    form.file.path.write_bytes(bytes(data))
    refused(form, "more than 5 members", max_members=5)


def test_archive_scan_time_is_bounded(wheel: Path) -> None:
    ticks = itertools.count(0, 100)
    refused(form_for(wheel), "took too long", max_seconds=30, clock=lambda: next(ticks))


# -- METADATA against the filename ---------------------------------------------


def _wheel_with_metadata(tmp_path: Path, metadata: bytes) -> UploadForm:
    path = make_zip(tmp_path / "pkg-1.0-py3-none-any.whl", wheel_members(metadata=metadata))
    return form_for(path)


def test_metadata_name_must_match(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: other\nVersion: 1.0\n\n")
    refused(form, "METADATA Name 'other' does not match the filename")


def test_metadata_name_must_be_valid(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg!\nVersion: 1.0\n\n")
    refused(form, "is not a valid project name")


def test_metadata_version_must_match(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nVersion: 2.0\n\n")
    refused(form, "METADATA Version '2.0' does not match the filename")


def test_metadata_version_must_be_valid(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nVersion: one\n\n")
    refused(form, "METADATA Version 'one' is not a valid version")


def test_metadata_name_required(tmp_path: Path) -> None:
    refused(_wheel_with_metadata(tmp_path, b"Version: 1.0\n\n"), "METADATA has no Name")


def test_metadata_must_be_utf8(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nVersion: 1.0\nAuthor: \xff\n\n")
    refused(form, "METADATA is not valid UTF-8")


def test_metadata_single_field_repeated(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nName: other\nVersion: 1.0\n\n")
    refused(form, "METADATA field 'Name' appears more than once")


def test_metadata_requires_python_must_parse(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nVersion: 1.0\nRequires-Python: >=3.x\n\n")
    refused(form, "METADATA Requires-Python '>=3.x' is not valid")


def test_metadata_requires_dist_must_parse(tmp_path: Path) -> None:
    form = _wheel_with_metadata(tmp_path, b"Name: pkg\nVersion: 1.0\nRequires-Dist: a b c\n\n")
    refused(form, "METADATA Requires-Dist 'a b c' is not valid")


# -- sdists ----------------------------------------------------------------------


def test_sdist_must_be_gzip(tmp_path: Path) -> None:
    path = tmp_path / "pkg-1.0.tar.gz"
    path.write_bytes(b"not gzip at all" * 50)
    refused(form_for(path), "not a valid gzip-compressed tar archive")


def test_sdist_must_be_tar(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "pkg-1.0.tar.gz"
    path.write_bytes(gzip.compress(b"gzip but not a tar" * 100))
    refused(form_for(path), "not a valid gzip-compressed tar archive")


def test_sdist_truncated(tmp_path: Path, sdist: Path) -> None:
    data = sdist.read_bytes()
    path = tmp_path / "my_pkg-1.0.tar.gz"
    path.write_bytes(data[: len(data) // 2])
    refused(form_for(path), "not a valid gzip-compressed tar archive")


@pytest.mark.parametrize("member", ["pkg-1.0/../../evil", "/etc/evil", "pkg-1.0/a\\b"])
def test_sdist_unsafe_member_paths(tmp_path: Path, member: str) -> None:
    refused(hostile_sdist(tmp_path, [(member, b"x")]), "has an unsafe path")


@pytest.mark.parametrize(
    "link",
    [
        tarinfo("pkg-1.0/evil", tarfile.SYMTYPE, "../../etc/passwd"),
        tarinfo("pkg-1.0/evil", tarfile.SYMTYPE, "/etc/passwd"),
        tarinfo("pkg-1.0/sub/evil", tarfile.SYMTYPE, "../../other"),
        tarinfo("pkg-1.0/evil", tarfile.LNKTYPE, "../etc/passwd"),
        tarinfo("pkg-1.0/evil", tarfile.LNKTYPE, "/etc/passwd"),
        tarinfo("pkg-1.0/evil", tarfile.LNKTYPE, "other-1.0/x"),
    ],
)
def test_sdist_links_outside(tmp_path: Path, link: tarfile.TarInfo) -> None:
    refused(hostile_sdist(tmp_path, [link]), "links outside the sdist")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_sdist_device_files(tmp_path: Path, kind: bytes) -> None:
    refused(hostile_sdist(tmp_path, [tarinfo("pkg-1.0/dev", kind)]), "is a device or special file")


def test_sdist_needs_one_top_directory(tmp_path: Path) -> None:
    refused(hostile_sdist(tmp_path, [("other-1.0/x", b"")]), "one top-level directory")


def test_sdist_top_level_file(tmp_path: Path) -> None:
    refused(hostile_sdist(tmp_path, [("setup.py", b"")]), "one top-level directory")


def test_sdist_without_pkg_info(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "pkg-1.0.tar.gz", [("pkg-1.0/setup.py", b"")])
    refused(form_for(path), "sdist is missing PKG-INFO")


def test_sdist_nested_pkg_info_does_not_count(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "pkg-1.0.tar.gz", [("pkg-1.0/pkg.egg-info/PKG-INFO", PKG_INFO)])
    refused(form_for(path), "sdist is missing PKG-INFO")


def test_sdist_pkg_info_symlink(tmp_path: Path) -> None:
    members = [("pkg-1.0/real", PKG_INFO), tarinfo("pkg-1.0/PKG-INFO", tarfile.SYMTYPE, "real")]
    form = form_for(make_tar(tmp_path / "pkg-1.0.tar.gz", members))
    refused(form, "PKG-INFO is not a regular file")


def test_sdist_duplicate_pkg_info(tmp_path: Path) -> None:
    refused(hostile_sdist(tmp_path, [("pkg-1.0/PKG-INFO", PKG_INFO)]), "duplicate member")


def test_sdist_pkg_info_too_large(tmp_path: Path) -> None:
    big = PKG_INFO + b"x" * 5000
    form = form_for(make_tar(tmp_path / "pkg-1.0.tar.gz", [("pkg-1.0/PKG-INFO", big)]))
    refused(form, "PKG-INFO is larger than 4096 bytes", max_metadata_bytes=4096)


def test_sdist_expansion_bomb(tmp_path: Path) -> None:
    zeros = ("pkg-1.0/zeros", b"\x00" * (3 * 1024 * 1024))
    form = hostile_sdist(tmp_path, [zeros])
    assert form.file.size < 64 * 1024
    refused(form, "sdist expands to too many bytes", max_unpacked_bytes=1024 * 1024)


def test_sdist_huge_pax_header_is_not_read(tmp_path: Path) -> None:
    info = tarfile.TarInfo("pkg-1.0/x")
    info.pax_headers = {"comment": "y" * (3 * 1024 * 1024)}
    form = hostile_sdist(tmp_path, [info])
    refused(form, "sdist expands to too many bytes", max_metadata_bytes=1024)


def test_sdist_too_many_members(tmp_path: Path) -> None:
    extra: list[tarfile.TarInfo | tuple[str, bytes]] = [(f"pkg-1.0/m{i}", b"") for i in range(10)]
    refused(hostile_sdist(tmp_path, extra), "more than 5 members", max_members=5)


def test_sdist_metadata_must_match(tmp_path: Path) -> None:
    info = b"Metadata-Version: 2.1\nName: pkg\nVersion: 9.9\n\n"
    form = form_for(make_tar(tmp_path / "pkg-1.0.tar.gz", [("pkg-1.0/PKG-INFO", info)]))
    refused(form, "METADATA Version '9.9' does not match the filename")


def test_zip_sdist_without_pkg_info(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "pkg-1.0.zip", [("pkg-1.0/setup.py", b"")])
    refused(form_for(path), "sdist is missing PKG-INFO")


def test_zip_sdist_unsafe_member(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "pkg-1.0.zip", [("pkg-1.0/PKG-INFO", PKG_INFO), ("../x", b"")])
    refused(form_for(path), "has an unsafe path")


def test_zip_sdist_needs_one_top_directory(tmp_path: Path) -> None:
    members = [("pkg-1.0/PKG-INFO", PKG_INFO), ("other/x", b"")]
    refused(form_for(make_zip(tmp_path / "pkg-1.0.zip", members)), "one top-level directory")


# -- metadata parsing ------------------------------------------------------------


def test_parse_core_metadata_fields() -> None:
    raw = (
        "Metadata-Version: 2.1\n"
        "Name: Pkg\n"
        "Version: 1.0\n"
        "Summary: A long\n"
        "  summary\n"
        "Author: Zoë\n"
        "Keywords: a,b c\n"
        "Classifier: A :: B\n"
        "Classifier: C :: D\n"
        "Requires-Dist: attrs\n"
        "Provides-Extra: test\n"
        "Project-URL: Homepage, https://example.invalid/\n"
        "Project-URL: no comma here\n"
        "License-File: LICENSE\n"
        "Description-Content-Type: text/markdown\n"
        "Unknown-Field: ignored\n"
        "\n"
        "# Title\n\nBody text.\n"
    ).encode()
    meta = parse_core_metadata(raw)
    assert meta["name"] == "Pkg"
    assert meta["summary"] == "A long summary"
    assert meta["author"] == "Zoë"
    assert meta["keywords"] == "a,b c"
    assert meta["classifiers"] == ["A :: B", "C :: D"]
    assert meta["requires_dist"] == ["attrs"]
    assert meta["provides_extra"] == ["test"]
    assert meta["project_urls"] == {"Homepage": "https://example.invalid/"}
    assert meta["license_files"] == ["LICENSE"]
    assert meta["description"] == "# Title\n\nBody text.\n"
    assert meta["description_content_type"] == "text/markdown"
    assert meta["requires_python"] is None and meta["platform"] == []
    assert "unknown_field" not in meta


def test_parse_core_metadata_header_description() -> None:
    raw = b"Name: pkg\nVersion: 1.0\nDescription: First line\n        |second\n        third\n"
    assert parse_core_metadata(raw)["description"] == "First line\nsecond\nthird"


def test_parse_core_metadata_size_limit() -> None:
    with pytest.raises(UploadError, match="larger than 10 bytes"):
        parse_core_metadata(b"Name: pkg\nVersion: 1.0\n", max_bytes=10)


def test_parse_core_metadata_nul() -> None:
    with pytest.raises(UploadError, match="NUL"):
        parse_core_metadata(b"Name: pkg\x00\nVersion: 1.0\n")


def test_parse_core_metadata_never_crashes() -> None:
    rng = random.Random(7)
    alphabet = b"Name: Version:\n\r\t :,=-_.abc\xc3\xa9\xff\x00\x1b" + bytes(range(256))
    samples = [
        bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))) for _ in range(300)
    ]
    samples += [b"", b"\n\n\n", b":" * 100, b"Name:\n Version:\n", b"\xef\xbb\xbfName: x\n"]
    for raw in samples:
        try:
            result = parse_core_metadata(b"Name: pkg\nVersion: 1.0\n" + raw)
        except UploadError as e:
            assert e.status == 400
        else:
            assert isinstance(result, dict)
        try:
            parse_core_metadata(raw)
        except UploadError as e:
            assert e.status == 400


def test_metadata_from_form() -> None:
    meta = metadata_from_form(
        {
            "name": ["pkg"],
            "version": ["1.0"],
            "summary": [" s "],
            "classifiers": ["A :: B", "C :: D"],
            "project_urls": ["Home, https://example.invalid/"],
            "license_file": ["LICENSE"],
            "keywords": ["a, b"],
            "sha256_digest": ["00"],
        }
    )
    assert meta["name"] == "pkg" and meta["summary"] == "s"
    assert meta["classifiers"] == ["A :: B", "C :: D"]
    assert meta["project_urls"] == {"Home": "https://example.invalid/"}
    assert meta["license_files"] == ["LICENSE"]
    assert meta["keywords"] == "a, b"
    assert "sha256_digest" not in meta
    assert meta["requires_dist"] == [] and meta["description"] is None
