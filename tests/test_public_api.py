import ravl


def test_every_public_name_resolves():
    for name in ravl.__all__:
        assert getattr(ravl, name) is not None, name


def test_dir_lists_the_manifest():
    assert {"load_model", "discover", "mitigate", "make_spurious_benchmark", "write_report"} <= set(dir(ravl))
