#!/usr/bin/env python3
"""An independent CRI client: gRPC C-core (grpcio) with stubs generated from k8s-cri's v1.proto at run time.

crius' Rust tests use tonic on both ends; this client shares none of that stack, so a misunderstanding of the wire
protocol that tonic client and tonic server would share shows up here. It drives a pod through its whole life and
prints one JSON object with what it observed; the Rust test (e2e/tests/independent_client.rs) asserts on it.

usage: cri_client.py SOCKET PROTO CGROUP_PARENT
"""
import json
import os
import sys
import tempfile


def stubs(proto, out):
    from grpc_tools import protoc

    src = os.path.join(out, "api.proto")
    with open(proto) as f, open(src, "w") as g:
        g.write(f.read())
    rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}", src])
    if rc != 0:
        sys.exit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    import api_pb2
    import api_pb2_grpc

    return api_pb2, api_pb2_grpc


def main():
    sock, proto, cgroup_parent = sys.argv[1:4]
    # The generated stubs live only as long as this run: nothing is left in /tmp.
    with tempfile.TemporaryDirectory(prefix="crius-pystubs-") as out:
        run(sock, proto, cgroup_parent, out)


def run(sock, proto, cgroup_parent, out):
    import grpc

    pb, rpc = stubs(proto, out)
    # Go's gRPC (kubelet, crictl) sends ":authority: localhost" on unix sockets; C-core would send the path.
    ch = grpc.insecure_channel(f"unix://{sock}", options=[("grpc.default_authority", "localhost")])
    rt = rpc.RuntimeServiceStub(ch)
    seen = {}
    v = rt.Version(pb.VersionRequest(version="v1"), timeout=10)
    seen["version"] = {"runtime_name": v.runtime_name, "runtime_api_version": v.runtime_api_version}
    st = rt.Status(pb.StatusRequest(verbose=True), timeout=10)
    seen["conditions"] = {c.type: c.status for c in st.status.conditions}
    seen["status_info_keys"] = sorted(st.info.keys())
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="py-pod", namespace="e2e", uid="py-uid-1", attempt=0),
        hostname="py-pod",
        labels={"client": "python"},
        annotations={"note": "independent"},
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )
    pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    seen["id"] = pod_id
    s = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=10)
    seen["state"] = pb.PodSandboxState.Name(s.status.state)
    seen["ip"] = s.status.network.ip
    seen["labels"] = dict(s.status.labels)
    seen["annotations"] = dict(s.status.annotations)
    seen["pid"] = json.loads(s.info["info"])["pid"]
    try:
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60)
        seen["duplicate"] = "OK"
    except grpc.RpcError as e:
        seen["duplicate"] = e.code().name
    try:
        rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64), timeout=10)
        seen["unknown_status"] = "OK"
    except grpc.RpcError as e:
        seen["unknown_status"] = e.code().name
    try:
        listed_containers = rt.ListContainers(pb.ListContainersRequest(), timeout=10)
        seen["list_containers"] = "OK %d" % len(listed_containers.containers)
    except grpc.RpcError as e:
        seen["list_containers"] = e.code().name
    listed = rt.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"client": "python"})), timeout=10
    )
    seen["listed"] = [p.id for p in listed.items]
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    s = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10)
    seen["state_after_stop"] = pb.PodSandboxState.Name(s.status.state)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
    seen["listed_after_remove"] = len(rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
