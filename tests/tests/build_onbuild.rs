//! ONBUILD: triggers are stored in the image's config, and run right after
//! FROM when another build uses that image as its base; the child image does
//! not inherit them.

mod build_support;

use build_support::*;

#[test]
fn onbuild_triggers_run_in_the_child_build() {
    if !requirements("onbuild_triggers_run_in_the_child_build") {
        return;
    }
    let s = Scratch::new();
    let parent = s.path().join("parent");
    strata_ok(
        &args(&[
            "--context", fixture("build/onbuild/parent").to_str().unwrap(),
            "--build-context", &s.base_context(), "--no-push",
            "--oci-layout-path", parent.to_str().unwrap(), "--image-format=oci",
        ]),
        s.path(),
        &[],
    );
    let parent_config = raw_config(&parent);
    assert_eq!(
        json_strings(&parent_config["config"]["OnBuild"]),
        ["COPY child.txt /child.txt", "RUN echo triggered > /triggered.txt"]
    );
    let child = s.path().join("child");
    strata_ok(
        &args(&[
            "--context", fixture("build/onbuild/child").to_str().unwrap(),
            "--build-context", &format!("parent=oci-layout://{}", parent.display()), "--no-push",
            "--oci-layout-path", child.to_str().unwrap(), "--image-format=oci",
        ]),
        s.path(),
        &[],
    );
    let root = unpack(&child, "latest", &s.path().join("bundle"));
    assert_eq!(std::fs::read_to_string(root.join("both.txt")).unwrap(), "from the child context\ntriggered\n");
    assert!(raw_config(&child)["config"]["OnBuild"].is_null(), "triggers are not inherited");
}
