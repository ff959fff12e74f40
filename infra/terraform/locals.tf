# Derived settings: sizes per engine and the environment the function gets.

locals {
  # Sizes per engine: YuNet + SFace peak about 0.3 GiB resident (bench/local_engine.py), with
  # room for four 16 MP decodes at once; MXFace only waits on HTTPS.
  engine_profiles = {
    local  = { memory = "1Gi", cpu = "1", concurrency = 4 }
    mxface = { memory = "512Mi", cpu = "1", concurrency = 8 }
  }
  profile     = local.engine_profiles[var.face_engine]
  memory      = coalesce(var.memory, local.profile.memory)
  cpu         = coalesce(var.cpu, local.profile.cpu)
  concurrency = coalesce(var.concurrency, local.profile.concurrency)

  uses_mxface   = var.face_engine == "mxface"
  runtime_key   = local.uses_mxface && var.mxface_key_delivery == "runtime"
  pinned_key    = local.uses_mxface && var.mxface_key_delivery == "pinned"
  source_bucket = coalesce(var.source_bucket_name, "${var.project_id}-faceid-fn-source")

  # Empty values are dropped, so each engine and key delivery sets only what it uses.
  environment = {
    for name, value in merge(var.function_settings, {
      FACE_ENGINE = var.face_engine
      # functions-framework's gunicorn runs THREADS threads: match what Cloud Run sends at once.
      THREADS           = tostring(local.concurrency)
      MXFACE_KEY_SECRET = local.runtime_key ? "projects/${var.project_id}/secrets/${var.mxface_key_secret_id}/versions/${var.mxface_key_version}" : ""
    }) : name => value if value != ""
  }

  apis = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ])
}
