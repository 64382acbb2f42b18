"""The v-prediction stages on the fine-tuned fixture: the teacher's own BPE tokenizer and text encoder, the data
folder at the VAE's resolution, student -> distill -> generate."""



def test_student_distill_generate(vpred_dir, caption_folder, tmp_path):
    from pocketdiff.sampling.pipeline import load_pipeline
    from pocketdiff.training.run import run_stage

    data = {"data": str(caption_folder)}
    s = run_stage("student", preset="quick", out=tmp_path / "student", overrides={
        "export_dir": str(tmp_path / "unet_student"), "options": {"teacher_dir": str(vpred_dir), "arch": "snapfusion", **data}})
    assert s["step"] == 3
    d = run_stage("distill", preset="quick", out=tmp_path / "distill", overrides={
        "export_dir": str(tmp_path / "unet_s2"),
        "options": {"teacher_dir": str(vpred_dir), "student": str(tmp_path / "unet_student"), **data}})
    assert d["step"] == 3
    pipe = load_pipeline(vpred_dir, unet_dir=tmp_path / "unet_s2")
    assert pipe.unet.spec.name != "sd15-from-diffusers"  # the SnapFusion student, not the teacher
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0)
    assert out.images.shape == (1, 64, 64, 3)
