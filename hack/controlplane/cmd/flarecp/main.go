// Command flarecp is a multi-call binary holding a small local Kubernetes control plane:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok, each run as
// its own OS process (they keep global state, so never two in one process), plus a launcher
// (`cluster up|down`) and `user-kubeconfig`.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const usage = `usage: flarecp COMMAND [flags]

components (each runs as its own process):
  etcd                      embedded etcd (go.etcd.io/etcd/server/v3/embed)
  kube-apiserver            k8s.io/kubernetes/cmd/kube-apiserver
  kube-controller-manager   k8s.io/kubernetes/cmd/kube-controller-manager
  kube-scheduler            k8s.io/kubernetes/cmd/kube-scheduler
  kubectl                   k8s.io/kubectl
  kwok                      sigs.k8s.io/kwok (fake nodes and pods)
  kubelet                   k8s.io/kubernetes/cmd/kubelet (the real node, --real-nodes)
  kube-proxy                k8s.io/kubernetes/cmd/kube-proxy (the real node's Services)

launcher:
  cluster up --dir DIR [--name NAME] [--nodes N] [--gpus N]
             [--real-nodes 1 --import IMAGE.tar ... [--real-node-gpus N]]   (root; see node.go)
             [--apiserver-port PORT] [--runc PATH] [--cni-bin-dir DIR]
  cluster down --dir DIR [--timeout 60s]
  user-kubeconfig --dir DIR --user NAME [--group G ...] --out FILE
  node-init                 internal: PID 1 of a real node's namespaces
  version
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	// Multi-call: a link named after a component runs that component.
	if name == "flarecp" || strings.HasPrefix(name, "flarecp") {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	os.Args = append([]string{name}, args...)
	os.Exit(dispatch(name, args))
}

func dispatch(name string, args []string) int {
	switch name {
	case "etcd":
		return runEtcd(args)
	case "kube-apiserver":
		return runAPIServer()
	case "kube-controller-manager":
		return runControllerManager()
	case "kube-scheduler":
		return runScheduler()
	case "kubelet":
		return runKubelet()
	case "kube-proxy":
		return runKubeProxy()
	case "kubectl":
		return runKubectl()
	case "kwok":
		return runKwok()
	case "node-init":
		return runNodeInit(args)
	case "cluster":
		return runCluster(args)
	case "user-kubeconfig":
		return runUserKubeconfig(args)
	case "version", "--version":
		fmt.Println(versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "flarecp: unknown command %q\n\n%s", name, usage)
	return 2
}
