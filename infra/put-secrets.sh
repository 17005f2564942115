#!/usr/bin/env bash
# Writes the secrets of paperless-ai-serverless to SSM Parameter Store as SecureStrings, under
# SECRETS_PREFIX (default /paperless-ai/, the template's SecretsPrefix parameter). Only the
# variables that are set in the environment are written; the others are left alone (a function
# skips a parameter that does not exist). API_KEYS must be set or exist already: the ingest and
# chat functions refuse to start without it. Values are never printed.
#
#   PAPERLESS_TOKEN=… WEBHOOK_SECRET=$(openssl rand -hex 24) API_KEYS=$(openssl rand -hex 24) \
#     infra/put-secrets.sh
#
# Optional: AWS_REGION / AWS_PROFILE as for any aws command; SECRETS_KMS_KEY_ID to encrypt with a
# customer managed key instead of aws/ssm. Functions read the secrets at cold start: after a
# change, run `infra/put-secrets.sh --restart STACK` (or redeploy) so running instances pick it up.
set -euo pipefail

prefix="${SECRETS_PREFIX:-/paperless-ai/}"
case "$prefix" in
  /*/ | /) ;;
  *) echo "SECRETS_PREFIX must start and end with '/' (got: $prefix)" >&2; exit 2 ;;
esac

restart_stack=""
if [[ "${1:-}" == "--restart" ]]; then
  restart_stack="${2:?usage: $0 [--restart STACK_NAME]}"
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--restart STACK_NAME]   (values come from the environment)" >&2
  exit 2
fi

command -v aws >/dev/null 2>&1 || { echo "the AWS CLI (aws) is not installed" >&2; exit 1; }

names=(PAPERLESS_TOKEN WEBHOOK_SECRET API_KEYS LLM_API_KEY EMBEDDING_API_KEY)
key_args=()
if [[ -n "${SECRETS_KMS_KEY_ID:-}" ]]; then
  key_args=(--key-id "$SECRETS_KMS_KEY_ID")
fi

# Fail closed: the ingest and chat functions refuse to start without API_KEYS, so a first run
# without it (nothing in SSM yet) is an error here rather than a stack that will not start.
if [[ -z "${API_KEYS:-}" ]] && ! aws ssm get-parameter --name "${prefix}API_KEYS" \
    --query Parameter.Name --output text --no-cli-pager >/dev/null 2>&1; then
  echo "API_KEYS is not set and ${prefix}API_KEYS does not exist yet: the ingest and chat" >&2
  echo "functions refuse to start without it. Set API_KEYS=\$(openssl rand -hex 24) and run again." >&2
  exit 2
fi

written=0
for name in "${names[@]}"; do
  value="${!name:-}"
  if [[ -z "$value" ]]; then
    echo "skip  ${prefix}${name} (not set)"
    continue
  fi
  case "$name" in
    WEBHOOK_SECRET)
      [[ ${#value} -ge 16 ]] || { echo "WEBHOOK_SECRET needs at least 16 characters" >&2; exit 2; } ;;
    API_KEYS)
      IFS=',' read -r -a keys <<<"$value"
      for k in "${keys[@]}"; do
        k="${k#"${k%%[![:space:]]*}"}"; k="${k%"${k##*[![:space:]]}"}"
        [[ -z "$k" || ${#k} -ge 16 ]] || { echo "every API key needs at least 16 characters" >&2; exit 2; }
      done ;;
  esac
  # The value goes through a file descriptor, not the command line, so it does not show in
  # the process list; the aws output (version, tier) is discarded.
  printf '%s' "$value" | aws ssm put-parameter \
    --name "${prefix}${name}" \
    --type SecureString \
    --overwrite \
    "${key_args[@]}" \
    --value "file:///dev/stdin" \
    --no-cli-pager >/dev/null
  echo "wrote ${prefix}${name}"
  written=$((written + 1))
done

echo "$written secret(s) written under ${prefix}"

if [[ -n "$restart_stack" ]]; then
  # A configuration update makes Lambda start new instances, which read the secrets again.
  for fn in $(aws cloudformation describe-stack-resources --stack-name "$restart_stack" \
      --query "StackResources[?ResourceType=='AWS::Lambda::Function'].PhysicalResourceId" \
      --output text --no-cli-pager); do
    aws lambda update-function-configuration --function-name "$fn" \
      --description "paperless-ai (secrets refreshed $(date -u +%Y-%m-%dT%H:%M:%SZ))" \
      --no-cli-pager >/dev/null
    echo "restarted $fn"
  done
fi
