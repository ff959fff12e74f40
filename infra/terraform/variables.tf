# Everything project-specific is a variable; project_id and region have no default on purpose.

variable "project_id" {
  description = "Google Cloud project that hosts the comparison function and its secrets."
  type        = string
}

variable "region" {
  description = "Region of the function, its bucket and its Cloud Run service (e.g. europe-west1)."
  type        = string
}

variable "function_name" {
  description = "Name of the function; its Cloud Run service gets the same name."
  type        = string
  default     = "faceid-verify"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,48}[a-z0-9]$", var.function_name))
    error_message = "function_name: lower-case letters, digits and dashes, 2 to 50 characters."
  }
}

variable "face_engine" {
  description = "Face engine (FACE_ENGINE): \"local\" runs YuNet + SFace in the function (needs 1Gi), \"mxface\" calls the MXFace API (512Mi is enough)."
  type        = string
  default     = "local"

  validation {
    condition     = contains(["local", "mxface"], var.face_engine)
    error_message = "face_engine must be \"local\" or \"mxface\"."
  }
}

variable "memory" {
  description = "Memory per instance (e.g. \"1Gi\"). null picks the engine's size: local 1Gi, mxface 512Mi."
  type        = string
  default     = null
}

variable "cpu" {
  description = "vCPUs per instance. null picks 1; concurrency above 1 needs at least 1 vCPU."
  type        = string
  default     = null
}

variable "concurrency" {
  description = "Requests one instance serves at once (max_instance_request_concurrency; THREADS is set to match). null picks the engine's value: local 4 (CPU-bound), mxface 8 (waits on the API)."
  type        = number
  default     = null

  validation {
    condition     = var.concurrency == null || (try(var.concurrency >= 1 && var.concurrency <= 1000 && floor(var.concurrency) == var.concurrency, false))
    error_message = "concurrency must be a whole number between 1 and 1000."
  }
}

variable "min_instances" {
  description = "Instances kept warm (0 saves money; 1 avoids a cold start, which is several seconds with the local engine)."
  type        = number
  default     = 0
}

variable "max_instances" {
  description = "Upper bound on instances: caps cost and the rate of calls to MXFace (100 a minute per client IP)."
  type        = number
  default     = 5
}

variable "timeout_seconds" {
  description = "Request timeout of the function; keep it above UPSTREAM_TIMEOUT_S and below the device's 30 s."
  type        = number
  default     = 25
}

variable "ingress_settings" {
  description = "Who may reach the function at the network level. ALLOW_ALL (default) with IAM-only authentication lets the on-prem connector call it over the internet; the front end refuses any request without an invoker's ID token. Choose ALLOW_INTERNAL_ONLY when the connector reaches Google through a VPC (Interconnect/VPN), ALLOW_INTERNAL_AND_GCLB behind a load balancer."
  type        = string
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "mxface_key_delivery" {
  description = "How the MXFace key reaches the function (mxface engine only). \"runtime\": MXFACE_KEY_SECRET names the secret version and the function reads it when first needed and again after MXFace answers 401 (with version \"latest\", a rotation needs no redeploy). \"pinned\": Cloud Run injects the version as MXFACE_KEY at instance start (each revision records exactly which version it uses; a rotation is a redeploy)."
  type        = string
  default     = "runtime"

  validation {
    condition     = contains(["runtime", "pinned"], var.mxface_key_delivery)
    error_message = "mxface_key_delivery must be \"runtime\" or \"pinned\"."
  }
}

variable "mxface_key_version" {
  description = "Secret Manager version of the MXFace key the function uses: \"latest\" or a number (recommended with pinned delivery). A pinned number must exist before the deployment."
  type        = string
  default     = "latest"

  validation {
    condition     = can(regex("^(latest|[1-9][0-9]*)$", var.mxface_key_version))
    error_message = "mxface_key_version must be \"latest\" or a positive whole number."
  }
}

variable "mxface_key_secret_id" {
  description = "Secret Manager id of the MXFace subscription key (container only; the value is added out of band)."
  type        = string
  default     = "faceid-mxface-key"
}

variable "webex_bot_token_secret_id" {
  description = "Secret Manager id of the Webex bot token (container only; the value is added out of band)."
  type        = string
  default     = "faceid-webex-bot-token"
}

variable "connector_readable_secret_ids" {
  description = "Secret ids in this project the connector's account may read (gsm: references in its TOML file), e.g. [\"faceid-webex-bot-token\"]. Empty by default: the connector account can only invoke the function."
  type        = list(string)
  default     = []
}

variable "runtime_service_account_id" {
  description = "Account id of the function's runtime service account."
  type        = string
  default     = "faceid-fn-runtime"
}

variable "connector_service_account_id" {
  description = "Account id of the service account the on-prem connector uses to call the function."
  type        = string
  default     = "faceid-connector"
}

variable "connector_workload_identity_principal" {
  description = "Optional federated principal (principal:// or principalSet:// from a workload identity pool) allowed to mint the connector account's ID tokens (Workload Identity Federation, no key file). Empty: the connector uses a key file instead."
  type        = string
  default     = ""

  validation {
    condition     = var.connector_workload_identity_principal == "" || can(regex("^principal(Set)?://iam\\.googleapis\\.com/", var.connector_workload_identity_principal))
    error_message = "connector_workload_identity_principal must be empty or a principal:// / principalSet:// identifier."
  }
}

variable "build_service_account" {
  description = "Optional email of the service account Cloud Build uses to build the function. null keeps the project default."
  type        = string
  default     = null
}

variable "source_bucket_name" {
  description = "Bucket for the function's source archives. null gives \"<project_id>-faceid-fn-source\"."
  type        = string
  default     = null
}

variable "function_settings" {
  description = "Optional tuning passed as environment variables; only names the function reads are accepted (e.g. {UPSTREAM_TIMEOUT_S = \"8\", MXFACE_MIN_CONFIDENCE = \"70\"})."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([for name in keys(var.function_settings) : contains([
      "MXFACE_API_URL", "MXFACE_MIN_CONFIDENCE", "UPSTREAM_TIMEOUT_S", "MAX_REQUEST_BYTES",
      "MAX_IMAGE_PIXELS", "LOCAL_MATCH_THRESHOLD", "MIN_FACE_PX", "DARK_MEAN_LEVEL",
      "DETECT_MAX_SIDE", "DESCRIPTOR_CACHE_SIZE",
    ], name)])
    error_message = "function_settings accepts only MXFACE_API_URL, MXFACE_MIN_CONFIDENCE, UPSTREAM_TIMEOUT_S, MAX_REQUEST_BYTES, MAX_IMAGE_PIXELS, LOCAL_MATCH_THRESHOLD, MIN_FACE_PX, DARK_MEAN_LEVEL, DETECT_MAX_SIDE, DESCRIPTOR_CACHE_SIZE."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs the deployment needs (never disabled on destroy)."
  type        = bool
  default     = true
}

variable "labels" {
  description = "Labels put on every resource that takes labels."
  type        = map(string)
  default     = { app = "faceid" }
}
