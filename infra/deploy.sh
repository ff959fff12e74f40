#!/usr/bin/env bash
# Deploys the comparison function with gcloud, for teams without Terraform: the same resources
# and grants as infra/terraform. Safe to run again (it creates what is missing and updates the
# function). --dry-run prints every command instead of running it. No secret value passes
# through this script: add them with `gcloud secrets versions add` (docs/deploy.md).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: infra/deploy.sh --project ID --region REGION [options]

  --engine local|mxface          face engine (default local: 1Gi; mxface: 512Mi)
  --key-delivery runtime|pinned  MXFace key: read at run time through MXFACE_KEY_SECRET (default)
                                 or injected by Cloud Run as MXFACE_KEY from a pinned version
  --key-version V                secret version: latest (default) or a number
  --ingress all|internal-only|internal-and-gclb   (default all, IAM-only authentication)
  --function NAME                function name (default faceid-verify)
  --memory SIZE --cpu N          override the engine's sizing
  --concurrency N                requests per instance (default local 4, mxface 8); THREADS matches
  --min-instances N              (default 0)     --max-instances N  (default 5)
  --timeout SECONDS              (default 25)
  --set NAME=VALUE               extra function setting (UPSTREAM_TIMEOUT_S, MIN_FACE_PX, ...)
  --connector-reads-secret ID    let the connector account read this secret (repeatable)
  --wif-principal PRINCIPAL      let this federated principal mint the connector's ID tokens
  --build-service-account EMAIL  service account Cloud Build uses
  --skip-apis                    do not enable the Google APIs
  --dry-run                      print the commands, run nothing
EOF
}

die() {
  printf 'deploy.sh: %s\n' "$*" >&2
  exit 2
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOURCE_DIR="$ROOT/function"

PROJECT=""
REGION=""
ENGINE="local"
KEY_DELIVERY="runtime"
KEY_VERSION="latest"
INGRESS="all"
FUNCTION="faceid-verify"
MEMORY=""
CPU=""
CONCURRENCY=""
MIN_INSTANCES=0
MAX_INSTANCES=5
TIMEOUT=25
BUILD_SA=""
WIF_PRINCIPAL=""
ENABLE_APIS=1
DRY_RUN=0
RUNTIME_SA_ID="faceid-fn-runtime"
CONNECTOR_SA_ID="faceid-connector"
MXFACE_SECRET="faceid-mxface-key"
WEBEX_SECRET="faceid-webex-bot-token"
SETTINGS=()
CONNECTOR_SECRETS=()
ALLOWED_SETTINGS=" MXFACE_API_URL MXFACE_MIN_CONFIDENCE UPSTREAM_TIMEOUT_S MAX_REQUEST_BYTES MAX_IMAGE_PIXELS LOCAL_MATCH_THRESHOLD MIN_FACE_PX DARK_MEAN_LEVEL DETECT_MAX_SIDE DESCRIPTOR_CACHE_SIZE "

while (($#)); do
  case "$1" in
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --region) REGION="${2:?--region needs a value}"; shift 2 ;;
    --engine) ENGINE="${2:?--engine needs a value}"; shift 2 ;;
    --key-delivery) KEY_DELIVERY="${2:?--key-delivery needs a value}"; shift 2 ;;
    --key-version) KEY_VERSION="${2:?--key-version needs a value}"; shift 2 ;;
    --ingress) INGRESS="${2:?--ingress needs a value}"; shift 2 ;;
    --function) FUNCTION="${2:?--function needs a value}"; shift 2 ;;
    --memory) MEMORY="${2:?--memory needs a value}"; shift 2 ;;
    --cpu) CPU="${2:?--cpu needs a value}"; shift 2 ;;
    --concurrency) CONCURRENCY="${2:?--concurrency needs a value}"; shift 2 ;;
    --min-instances) MIN_INSTANCES="${2:?--min-instances needs a value}"; shift 2 ;;
    --max-instances) MAX_INSTANCES="${2:?--max-instances needs a value}"; shift 2 ;;
    --timeout) TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    --set) SETTINGS+=("${2:?--set needs NAME=VALUE}"); shift 2 ;;
    --connector-reads-secret) CONNECTOR_SECRETS+=("${2:?--connector-reads-secret needs an id}"); shift 2 ;;
    --wif-principal) WIF_PRINCIPAL="${2:?--wif-principal needs a value}"; shift 2 ;;
    --build-service-account) BUILD_SA="${2:?--build-service-account needs a value}"; shift 2 ;;
    --skip-apis) ENABLE_APIS=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $PROJECT ]] || die "--project is required"
[[ -n $REGION ]] || die "--region is required"
[[ $ENGINE =~ ^(local|mxface)$ ]] || die "--engine must be local or mxface"
[[ $KEY_DELIVERY =~ ^(runtime|pinned)$ ]] || die "--key-delivery must be runtime or pinned"
[[ $KEY_VERSION =~ ^(latest|[1-9][0-9]*)$ ]] || die "--key-version must be latest or a number"
[[ $INGRESS =~ ^(all|internal-only|internal-and-gclb)$ ]] || die "--ingress must be all, internal-only or internal-and-gclb"
[[ $FUNCTION =~ ^[a-z][a-z0-9-]{0,48}[a-z0-9]$ ]] || die "--function: lower-case letters, digits, dashes"
for n in "$MIN_INSTANCES" "$MAX_INSTANCES" "$TIMEOUT" ${CONCURRENCY:+"$CONCURRENCY"}; do
  [[ $n =~ ^[0-9]+$ ]] || die "instance counts, --timeout and --concurrency must be whole numbers"
done
if [[ -n $WIF_PRINCIPAL && ! $WIF_PRINCIPAL =~ ^principal(Set)?://iam\.googleapis\.com/ ]]; then
  die "--wif-principal must be a principal:// or principalSet:// identifier"
fi
for setting in ${SETTINGS[@]+"${SETTINGS[@]}"}; do
  [[ $setting == *=* && $setting != *,* ]] || die "--set takes NAME=VALUE without commas"
  [[ $ALLOWED_SETTINGS == *" ${setting%%=*} "* ]] || die "--set: the function does not read ${setting%%=*}"
done

# Sizes per engine, as in infra/terraform/locals.tf: YuNet + SFace peak about 0.3 GiB resident.
if [[ $ENGINE == local ]]; then
  MEMORY="${MEMORY:-1Gi}"
  CONCURRENCY="${CONCURRENCY:-4}"
else
  MEMORY="${MEMORY:-512Mi}"
  CONCURRENCY="${CONCURRENCY:-8}"
fi
CPU="${CPU:-1}"

RUNTIME_SA="$RUNTIME_SA_ID@$PROJECT.iam.gserviceaccount.com"
CONNECTOR_SA="$CONNECTOR_SA_ID@$PROJECT.iam.gserviceaccount.com"
export CLOUDSDK_CORE_DISABLE_PROMPTS=1

show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

run() {
  show "$@"
  ((DRY_RUN)) || "$@"
}

# IAM needs a few seconds to see a new service account: retry a binding, then fail loudly.
run_retrying() {
  show "$@"
  ((DRY_RUN)) && return 0
  local attempt
  for attempt in 1 2 3 4 5; do
    "$@" && return 0
    ((attempt < 5)) || break
    printf 'deploy.sh: retrying in %ss\n' $((attempt * 5)) >&2
    sleep $((attempt * 5))
  done
  die "failed: $*"
}

# create_if_absent DESCRIBE... -- CREATE...: only a NOT_FOUND answer leads to the create; any
# other failure of the describe (no permission, API disabled, no login) stops the script.
create_if_absent() {
  local -a describe=()
  while [[ $1 != -- ]]; do
    describe+=("$1")
    shift
  done
  shift
  show "${describe[@]}"
  if ((DRY_RUN)); then
    printf '  (if absent) '
    show "$@"
    return 0
  fi
  local err
  if err="$("${describe[@]}" 2>&1 >/dev/null)"; then
    printf '  exists, kept\n'
    return 0
  fi
  if [[ $err != *NOT_FOUND* && $err != *"not found"* && $err != *"does not exist"* ]]; then
    printf '%s\n' "$err" >&2
    die "could not check: ${describe[*]}"
  fi
  run "$@"
}

if ! ((DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk)"
  [[ -f $SOURCE_DIR/main.py ]] || die "function source not found in $SOURCE_DIR"
fi

echo "# 1. APIs"
if ((ENABLE_APIS)); then
  run gcloud services enable --project="$PROJECT" \
    artifactregistry.googleapis.com cloudbuild.googleapis.com cloudfunctions.googleapis.com \
    iam.googleapis.com iamcredentials.googleapis.com run.googleapis.com \
    secretmanager.googleapis.com storage.googleapis.com
fi

echo "# 2. Service accounts: the function's identity and the connector's"
create_if_absent gcloud iam service-accounts describe "$RUNTIME_SA" --project="$PROJECT" -- \
  gcloud iam service-accounts create "$RUNTIME_SA_ID" --project="$PROJECT" \
  --display-name="faceid comparison function (runtime)" \
  --description="Runs the comparison function; reads only its own secret."
create_if_absent gcloud iam service-accounts describe "$CONNECTOR_SA" --project="$PROJECT" -- \
  gcloud iam service-accounts create "$CONNECTOR_SA_ID" --project="$PROJECT" \
  --display-name="faceid on-prem connector" \
  --description="Calls the comparison function from the on-prem connector (run.invoker on that service only)."

echo "# 3. Secret containers (values are added out of band: gcloud secrets versions add)"
for secret in "$MXFACE_SECRET" "$WEBEX_SECRET"; do
  create_if_absent gcloud secrets describe "$secret" --project="$PROJECT" -- \
    gcloud secrets create "$secret" --project="$PROJECT" --replication-policy=automatic \
    --labels=app=faceid
done

echo "# 4. Secret access, one secret at a time"
if [[ $ENGINE == mxface ]]; then
  run_retrying gcloud secrets add-iam-policy-binding "$MXFACE_SECRET" --project="$PROJECT" \
    --member="serviceAccount:$RUNTIME_SA" --role=roles/secretmanager.secretAccessor \
    --condition=None
fi
for secret in ${CONNECTOR_SECRETS[@]+"${CONNECTOR_SECRETS[@]}"}; do
  run_retrying gcloud secrets add-iam-policy-binding "$secret" --project="$PROJECT" \
    --member="serviceAccount:$CONNECTOR_SA" --role=roles/secretmanager.secretAccessor \
    --condition=None
done

echo "# 5. The function (created or updated)"
env_vars="FACE_ENGINE=$ENGINE,THREADS=$CONCURRENCY"
secrets_flag="--clear-secrets"
if [[ $ENGINE == mxface && $KEY_DELIVERY == runtime ]]; then
  env_vars+=",MXFACE_KEY_SECRET=projects/$PROJECT/secrets/$MXFACE_SECRET/versions/$KEY_VERSION"
elif [[ $ENGINE == mxface ]]; then
  secrets_flag="--set-secrets=MXFACE_KEY=$MXFACE_SECRET:$KEY_VERSION"
fi
for setting in ${SETTINGS[@]+"${SETTINGS[@]}"}; do
  env_vars+=",$setting"
done
deploy=(
  gcloud functions deploy "$FUNCTION" --gen2 --project="$PROJECT" --region="$REGION"
  --runtime=python312 --entry-point=verify_faces --source="$SOURCE_DIR"
  --trigger-http --no-allow-unauthenticated --ingress-settings="$INGRESS"
  --service-account="$RUNTIME_SA" --memory="$MEMORY" --cpu="$CPU"
  --concurrency="$CONCURRENCY" --min-instances="$MIN_INSTANCES"
  --max-instances="$MAX_INSTANCES" --timeout="${TIMEOUT}s"
  --set-env-vars="$env_vars" "$secrets_flag" --update-labels=app=faceid
)
if [[ -n $BUILD_SA ]]; then
  deploy+=("--build-service-account=projects/$PROJECT/serviceAccounts/$BUILD_SA")
fi
run "${deploy[@]}"

echo "# 6. The connector may invoke this function's Cloud Run service, nothing else"
run_retrying gcloud run services add-iam-policy-binding "$FUNCTION" --project="$PROJECT" \
  --region="$REGION" --member="serviceAccount:$CONNECTOR_SA" --role=roles/run.invoker \
  --condition=None
if [[ -n $WIF_PRINCIPAL ]]; then
  run_retrying gcloud iam service-accounts add-iam-policy-binding "$CONNECTOR_SA" \
    --project="$PROJECT" --member="$WIF_PRINCIPAL" \
    --role=roles/iam.serviceAccountOpenIdTokenCreator --condition=None
fi

echo "# 7. Function URL (the connector's function.url and ID-token audience)"
run gcloud functions describe "$FUNCTION" --project="$PROJECT" --region="$REGION" \
  --format="value(serviceConfig.uri)"
echo "# Connector account: $CONNECTOR_SA"
