# Shared start of the VM test scripts (`machine` runs the agent, `hydra` sends).
import base64, os

# Made at run time: the key is in no file of the test's closure.
key = "whsec_" + base64.b64encode(os.urandom(32)).decode()
status = "curl -sf http://127.0.0.1:9980/v1/status"


def install_key(node, path):
    node.succeed(f"mkdir -p $(dirname {path}) && (umask 077; echo '{key}' > {path})")


def start_agent(key_file):
    install_key(machine, key_file)
    install_key(hydra, "/root/hydra-upgrade.key")
    machine.succeed("systemctl start nixos-hydra-upgrade.service")
    machine.wait_for_unit("nixos-hydra-upgrade.service")
    hydra.wait_until_succeeds("curl -sf http://machine:9980/healthz")


def notify(build):
    hydra.succeed(
        "nixos-hydra-upgrade notify --url http://machine:9980 "
        f"--secret-file /root/hydra-upgrade.key --hydra-json /etc/payload-{build}.json"
    )


def wait_status(jq_filter):
    machine.wait_until_succeeds(f"{status} | jq -e '{jq_filter}'", timeout=600)


def resolved(path):
    return machine.succeed(f"readlink -f {path}").strip()
