#!/bin/sh
# notify.sh KEY_FILE URL... — fallback Hydra RunCommand sender for nixos-hydra-upgrade.
#
# Prefer `nixos-hydra-upgrade notify` (retries, routes, one deadline). This script does the same
# for one payload with POSIX sh, jq, openssl, od, date and curl:
# - reads the RunCommand payload from the file named by $HYDRA_JSON;
# - does nothing (exit 0) unless it is a buildFinished event with buildStatus 0;
# - signs it as Standard Webhooks v1 (SPEC §4) with the first key of KEY_FILE
#   (`whsec_<base64>` per line);
# - POSTs the payload bytes unchanged to every URL, concurrently, each bounded by curl's
#   timeouts, and exits 1 when any delivery did not get a 2xx answer.
# A URL without a path gets /v1/upgrade appended: "http://web1:9980" = "http://web1:9980/v1/upgrade".
#
# The key never appears in an argv (Hydra's host shows argv in /proc, and Hydra shows the
# command text and output in its web UI): it is read with the `read` builtin, decoded by openssl
# through a pipe, and HMAC-SHA256 is computed from its definition with plain `openssl dgst` fed
# by the `printf` builtin:  HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)).
# (`openssl dgst -hmac KEY` and `openssl mac -macopt hexkey:KEY` would put it in argv.)
#
# For tests only: NIXOS_HYDRA_UPGRADE_WEBHOOK_ID and NIXOS_HYDRA_UPGRADE_WEBHOOK_TIMESTAMP fix the
# id and timestamp; NIXOS_HYDRA_UPGRADE_SIGN_ONLY=1 prints the webhook-signature value for the
# payload (whatever its event) and sends nothing.
set -eu

die() {
	echo "notify.sh: $*" >&2
	exit 2
}

[ $# -ge 1 ] || die "usage: notify.sh KEY_FILE URL..."
key_file=$1
shift
payload=${HYDRA_JSON:-}
[ -n "$payload" ] || die "HYDRA_JSON is not set (run this from Hydra's RunCommand)"
[ -r "$payload" ] || die "cannot read the payload $payload"
sign_only=${NIXOS_HYDRA_UPGRADE_SIGN_ONLY:-0}

if [ "$sign_only" != 1 ]; then
	[ $# -ge 1 ] || die "usage: notify.sh KEY_FILE URL..."
	if ! jq -e '.event == "buildFinished" and .buildStatus == 0' "$payload" >/dev/null 2>&1; then
		echo "notify.sh: not a successful buildFinished event, nothing sent"
		exit 0
	fi
fi

# First line of the key file, without a trailing CR; it stays inside this shell.
[ -r "$key_file" ] || die "cannot read the key file $key_file"
line=
IFS= read -r line <"$key_file" || [ -n "$line" ] || die "the key file $key_file is empty"
line=${line%"$(printf '\r')"}
case $line in
whsec_?*) ;;
*) die "the first line of the key file $key_file is not whsec_<base64>" ;;
esac

# Key bytes as hex words; a key longer than the SHA-256 block (64 bytes) is hashed first.
key_hex=$(printf '%s' "${line#whsec_}" | openssl base64 -d -A | od -An -v -tx1)
count() { echo $#; }
# shellcheck disable=SC2086 # split into words on purpose
key_len=$(count $key_hex)
[ "$key_len" -gt 0 ] || die "the key in $key_file is not valid base64"
if [ "$key_len" -gt 64 ]; then
	key_hex=$(printf '%s' "${line#whsec_}" | openssl base64 -d -A | openssl dgst -sha256 -binary | od -An -v -tx1)
fi
line=

# The key XOR a pad byte, zero-padded to 64 bytes, as printf octal escapes (\ooo...).
pad() {
	out=
	n=0
	for b in $key_hex; do
		v=$((0x$b ^ $1))
		out="$out\\$((v / 64))$((v / 8 % 8))$((v % 8))"
		n=$((n + 1))
	done
	while [ "$n" -lt 64 ]; do
		out="$out\\$(($1 / 64))$(($1 / 8 % 8))$(($1 % 8))"
		n=$((n + 1))
	done
	printf '%s\n' "$out"
}
ipad=$(pad 54) # 0x36
opad=$(pad 92) # 0x5c
key_hex=

id=${NIXOS_HYDRA_UPGRADE_WEBHOOK_ID:-msg_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
ts=${NIXOS_HYDRA_UPGRADE_WEBHOOK_TIMESTAMP:-$(date +%s)}

# shellcheck disable=SC2059 # the pads are printf formats made only of octal escapes
signature=v1,$(
	{
		printf "$opad"
		{
			printf "$ipad"
			printf '%s.%s.' "$id" "$ts"
			cat "$payload"
		} | openssl dgst -sha256 -binary
	} | openssl dgst -sha256 -binary | openssl base64 -A
)
ipad=
opad=

if [ "$sign_only" = 1 ]; then
	echo "$signature"
	exit 0
fi

send() {
	url=$1
	case $url in
	*://*/?*) ;;
	*/) url=${url}v1/upgrade ;;
	*) url=$url/v1/upgrade ;;
	esac
	# Bounded: Hydra runs commands one at a time and without a timeout. Retries keep the id.
	out=$(curl -sS --connect-timeout 5 --max-time 20 --retry 2 --retry-max-time 30 \
		-H 'Content-Type: application/json' \
		-H "webhook-id: $id" -H "webhook-timestamp: $ts" -H "webhook-signature: $signature" \
		--data-binary @"$payload" -w ' %{http_code}' "$url" 2>&1) || true
	code=${out##* }
	case $code in
	2??)
		echo "$url: $out"
		return 0
		;;
	*)
		echo "$url: delivery failed: $out" >&2
		return 1
		;;
	esac
}

# Concurrently; wait for all before exiting, since Hydra deletes $HYDRA_JSON when we return.
pids=
for url in "$@"; do
	send "$url" &
	pids="$pids $!"
done
status=0
for pid in $pids; do
	wait "$pid" || status=1
done
exit "$status"
