package main

// A real node for `cluster up --real-nodes 1`: containerd (with Debian's runc and CNI plugins),
// kubelet, kube-proxy and CoreDNS, all inside one process tree that lives in its own PID, mount
// and network namespaces:
//
//   launcher (host namespaces)
//     └─ flarecp node-init     PID 1 of a new PID namespace, own mount and network namespace
//          ├─ containerd       (its shims and every container process are in that PID namespace)
//          ├─ coredns          bound to the node's IP: the cluster DNS
//          ├─ kubelet
//          └─ kube-proxy       iptables rules in the node's network namespace only
//
// Why namespaces: kube-proxy owns fixed iptables chains (KUBE-SERVICES, ...), so two clusters'
// proxies in one network namespace would erase each other's rules; containerd, kubelet and the
// CNI plugins write to fixed host paths (/run/containerd, /var/lib/cni, /var/log/pods, ...).
// In their own namespaces several clusters with real nodes run side by side, and `cluster down`
// leaves nothing behind by construction: when node-init (PID 1) exits the kernel kills every
// process of its PID namespace, its mounts vanish with the mount namespace, and the network
// namespace (with its veth, bridge and iptables chains) goes with its last process. The host
// keeps only what the launcher removes itself: the cgroup directories and a lock file.
//
// Host side: a veth pair flcp<i> (host, 10.240.<i>.1/30) <-> eth0 (node, 10.240.<i>.2/30) and a
// route to the node's pod subnet 10.241.<i>.0/24; <i> is an index held by a flock on
// /run/flarecp/node-<i>.lock for the launcher's life. The apiserver listens on all addresses and
// advertises 10.240.<i>.1, so pods reach it through the `kubernetes` Service.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

const (
	realNodeName     = "real-node-0"
	pauseImage       = "registry.k8s.io/pause:3.10.2"
	localStorage     = "flarecp-local"
	localProvisioner = "flarecp.io/local-path"
	lockDir          = "/run/flarecp"
)

// nodeNet is the addressing of one real node, derived from its index.
type nodeNet struct {
	index          int
	hostIP, nodeIP string // the veth pair, a /30
	podCIDR, podGW string // the node's pod subnet (CNI bridge, host-local IPAM)
	hostLink       string // the host end of the veth pair
	lock           *os.File
	lockPath       string
	cgroupName     string // kubelet's cgroupRoot, one per node
}

func newNodeNet(i int) *nodeNet {
	return &nodeNet{
		index:      i,
		hostIP:     fmt.Sprintf("10.240.%d.1", i),
		nodeIP:     fmt.Sprintf("10.240.%d.2", i),
		podCIDR:    fmt.Sprintf("10.241.%d.0/24", i),
		podGW:      fmt.Sprintf("10.241.%d.1", i),
		hostLink:   fmt.Sprintf("flcp%d", i),
		cgroupName: fmt.Sprintf("flarecp-node-%d", i),
	}
}

// checkNodePrerequisites runs before anything starts, so that a missing piece fails `cluster up`
// with what to install and leaves nothing running.
func checkNodePrerequisites(self string, o upOptions) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "a real node needs root (network and mount namespaces, cgroups, iptables): run `cluster up --real-nodes` as root")
	}
	if _, err := os.Stat(o.runc); err != nil {
		missing = append(missing, fmt.Sprintf("runc not found at %s: install Debian's runc (`apt-get install runc`) or pass --runc PATH", o.runc))
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(o.cniBinDir, p)); err != nil {
			missing = append(missing, fmt.Sprintf("CNI plugin %s not found in %s: install Debian's containernetworking-plugins (`apt-get install containernetworking-plugins`) or pass --cni-bin-dir DIR", p, o.cniBinDir))
			break
		}
	}
	for _, b := range []struct{ bin, pkg string }{{"ip", "iproute2"}, {"iptables", "iptables"}, {"iptables-restore", "iptables"}, {"iptables-save", "iptables"}} {
		if _, err := exec.LookPath(b.bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s not found in PATH: install Debian's %s (`apt-get install %s`)", b.bin, b.pkg, b.pkg))
		}
	}
	binDir := filepath.Dir(self)
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "coredns"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			missing = append(missing, fmt.Sprintf("%s not found beside flarecp in %s: rebuild with hack/controlplane/build.sh (`make controlplane`)", b, binDir))
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		if _, err2 := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err2 != nil {
			missing = append(missing, "no cgroup v1 memory controller nor cgroup v2 at /sys/fs/cgroup: kubelet cannot run")
		}
	}
	for _, f := range o.imports {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, fmt.Sprintf("image archive %s: %v (build it with `make images`)", f, err))
		}
	}
	if o.realNodes > 1 {
		missing = append(missing, fmt.Sprintf("--real-nodes %d: at most 1 real node per cluster (run several clusters for more)", o.realNodes))
	}
	if msg := checkNodeDisk(o.dir, o.imports); msg != "" {
		missing = append(missing, msg)
	}
	if len(missing) > 0 {
		return errors.New("cannot start a real node:\n  - " + strings.Join(missing, "\n  - "))
	}
	return nil
}

// checkNodeDisk: the node unpacks every imported archive into its own store under dir (about
// the archive's size: they are uncompressed), and its kubelet starts evicting Pods once the
// filesystem has less than 1% free (evictionHard). Refuse up front, with the figures, rather
// than let the node fill the disk half-way through a run.
func checkNodeDisk(dir string, imports []string) string {
	var need uint64
	for _, f := range imports {
		if st, err := os.Stat(f); err == nil {
			need += uint64(st.Size())
		}
	}
	probe := dir
	for probe != "/" {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		probe = filepath.Dir(probe)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(probe, &fs); err != nil {
		return ""
	}
	free := fs.Bavail * uint64(fs.Bsize)
	total := fs.Blocks * uint64(fs.Bsize)
	headroom := max(2<<30, total/50) // 2% of the filesystem (kubelet evicts below 1%), at least 2 GiB
	if free >= need+headroom {
		return ""
	}
	gb := func(b uint64) string { return fmt.Sprintf("%.1f GB", float64(b)/1e9) }
	return fmt.Sprintf("not enough free disk for a real node in %s: %s free, the imported images need %s unpacked "+
		"plus %s headroom (the kubelet evicts Pods below 1%% free): free some space (other clusters' directories, "+
		"old image archives in ~/.cache/flare-operator/images) or put --dir on a larger filesystem",
		probe, gb(free), gb(need), gb(headroom))
}

// allocateNodeNet takes the lowest free index: its lock file is held (flock) for the launcher's
// life, so a crashed launcher frees it, and its host link must not exist.
func allocateNodeNet() (*nodeNet, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	for i := 1; i < 250; i++ {
		n := newNodeNet(i)
		if _, err := net.InterfaceByName(n.hostLink); err == nil {
			continue
		}
		path := filepath.Join(lockDir, fmt.Sprintf("node-%d.lock", i))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		n.lock, n.lockPath = f, path
		fmt.Fprintf(f, "%d\n", os.Getpid())
		return n, nil
	}
	return nil, errors.New("no free real-node index (1..249): too many clusters with real nodes")
}

// release removes what the host keeps of the node once node-init is gone: the cgroup
// directories kubelet and runc made, and the index lock.
func (n *nodeNet) release() {
	removeCgroups(n.cgroupName)
	if n.lock != nil {
		os.Remove(n.lockPath)
		n.lock.Close()
		n.lock = nil
	}
}

// cgroupHierarchies lists the mounted cgroup hierarchies: v1 (/sys/fs/cgroup/cpu, ...) and v2.
func cgroupHierarchies() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 {
			continue
		}
		if fstype := fields[sep+1]; fstype == "cgroup" || fstype == "cgroup2" {
			// The hybrid layout's v2 tree (/sys/fs/cgroup/unified) too: runc mirrors its cgroups there.
			out = append(out, fields[4])
		}
	}
	return out
}

// makeCgroups creates kubelet's cgroupRoot in every hierarchy (kubelet insists that it exists);
// cpuset children need cpus and mems before anything can join them.
func makeCgroups(name string) error {
	removeCgroups(name) // a crashed earlier run with this index
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, name)
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					_ = os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
			}
		}
	}
	return nil
}

// removeCgroups removes name's cgroup trees, deepest first, in every hierarchy. Their processes
// are gone (the node's PID namespace died), but the kernel may take a moment to reap them.
func removeCgroups(name string) {
	deadline := time.Now().Add(10 * time.Second)
	for _, h := range cgroupHierarchies() {
		root := filepath.Join(h, name)
		for {
			var dirs []string
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			if len(dirs) == 0 {
				break
			}
			sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
			failed := false
			for _, d := range dirs {
				if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
					failed = true
				}
			}
			if !failed || time.Now().After(deadline) {
				if failed {
					logf("could not remove cgroup %s (processes still in it?)", root)
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// startNode starts node-init in new PID, mount and network namespaces and wires its network.
func (l *launcher) startNode(o upOptions, n *nodeNet, server string, p *pkiSet) (*child, error) {
	nodeDir := filepath.Join(o.dir, "node")
	// Fresh state each time, like etcd: the cluster's objects are new, so are its containers.
	// Only the image content store is kept (re-importing the runtime image is the slow part).
	for _, d := range []string{"kubelet", "state", "cni-ipam", "pod-logs", "runc"} {
		if err := os.RemoveAll(filepath.Join(nodeDir, d)); err != nil {
			return nil, err
		}
	}
	if err := os.RemoveAll(filepath.Join(o.dir, "volumes")); err != nil {
		return nil, err
	}
	for _, d := range []string{"cni", "sysctl", "containerd", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(nodeDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(o.dir, "volumes"), 0o755); err != nil {
		return nil, err
	}
	if err := makeCgroups(n.cgroupName); err != nil {
		return nil, err
	}
	if err := writeNodeConfig(o, n, nodeDir, server, p); err != nil {
		return nil, err
	}
	args := []string{"--dir=" + o.dir, "--index=" + strconv.Itoa(n.index)}
	for _, f := range o.imports {
		args = append(args, "--import="+f)
	}
	c, err := l.startPath("node", l.self, &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true,
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET,
	}, append([]string{"node-init"}, args...)...)
	if err != nil {
		return nil, err
	}
	pid := strconv.Itoa(c.cmd.Process.Pid)
	for _, cmd := range [][]string{
		{"link", "add", n.hostLink, "type", "veth", "peer", "name", "eth0", "netns", pid},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostLink},
		{"link", "set", n.hostLink, "up"},
		{"route", "add", n.podCIDR, "via", n.nodeIP, "dev", n.hostLink},
	} {
		if out, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
			return c, fmt.Errorf("ip %s: %v: %s", strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return c, nil
}

func writeNodeConfig(o upOptions, n *nodeNet, nodeDir, server string, p *pkiSet) error {
	nodeServer := strings.Replace(server, "127.0.0.1", n.hostIP, 1)
	// Identities: the kubelet (Node authorizer, NodeRestriction), kube-proxy (bootstrap RBAC binds
	// system:node-proxier to system:kube-proxy) and CoreDNS (nodeRBAC: reads Services,
	// EndpointSlices, Namespaces and Pods, nothing else).
	kubelet, err := p.ca.sign("system:node:"+realNodeName, []string{"system:nodes"}, nil, nil, false)
	if err != nil {
		return err
	}
	proxy, err := p.ca.sign("system:kube-proxy", nil, nil, nil, false)
	if err != nil {
		return err
	}
	coredns, err := p.ca.sign(corednsUser, nil, nil, nil, false)
	if err != nil {
		return err
	}
	kcs := map[string]*keyPair{"kubelet": kubelet, "kube-proxy": proxy, "coredns": coredns}
	for name, kp := range kcs {
		b, err := kubeconfigBytes(o.name, nodeServer, p.ca, kp)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(nodeDir, name+".kubeconfig"), b, 0o600); err != nil {
			return err
		}
	}
	sock := filepath.Join(nodeDir, "containerd.sock")
	files := map[string]string{
		"containerd.toml": fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = "%[3]s.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[4]q

[plugins.'io.containerd.cri.v1.runtime']
  # These VMs give no CAP_SYS_RESOURCE: nothing may lower oom_score_adj (NOTES-realnode.md).
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[5]q
        SystemdCgroup = false
        Root = %[6]q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[7]q]
    conf_dir = %[8]q
    max_conf_num = 1
`, filepath.Join(nodeDir, "containerd"), filepath.Join(nodeDir, "state"), sock, pauseImage,
			o.runc, filepath.Join(nodeDir, "runc"), o.cniBinDir, filepath.Join(nodeDir, "cni")),
		"cni/10-flarecp.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "flarecp",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, n.podCIDR, n.podGW, filepath.Join(nodeDir, "cni-ipam")),
		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on these machines: since 1.35 kubelet refuses it unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%[1]s
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
# The sysctls kubelet wants are shown to it in its mount namespace (node-init), so with
# protectKernelDefaults it neither fails nor rewrites the shared host's vm.* and kernel.*.
protectKernelDefaults: true
oomScoreAdj: 0
clusterDNS: [%[3]s]
clusterDomain: cluster.local
resolvConf: %[4]s
podLogsDirectory: %[5]s
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%", "nodefs.inodesFree": "1%%"}
# Imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[6]s}
authorization:
  mode: Webhook
registerNode: true
nodeStatusReportFrequency: 10s
# How soon a changed ConfigMap reaches the files of the pods mounting it (default 1m): a site's
# approved-jobs document, which its NVFlare client reads, follows approvals within ~10 s here.
syncFrequency: 10s
`, n.cgroupName, sock, n.nodeIP, filepath.Join(nodeDir, "resolv.conf"), filepath.Join(nodeDir, "pod-logs"),
			filepath.Join(p.dir, "ca.crt")),
		// Pods with dnsPolicy Default get this; there is no upstream resolver on an offline machine.
		"resolv.conf": fmt.Sprintf("nameserver %s\n", n.nodeIP),
		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
hostnameOverride: %[2]s
mode: iptables
clusterCIDR: %[3]s
bindAddress: %[4]s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, filepath.Join(nodeDir, "kube-proxy.kubeconfig"), realNodeName, n.podCIDR, n.nodeIP),
		"Corefile": fmt.Sprintf(`.:53 {
    bind %[1]s
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %[2]s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
`, n.nodeIP, filepath.Join(nodeDir, "coredns.kubeconfig")),
		// What kubelet checks with protectKernelDefaults (pkg/kubelet/cm setupKernelTunables).
		"sysctl/vm.overcommit_memory":      "1\n",
		"sysctl/vm.panic_on_oom":           "0\n",
		"sysctl/kernel.panic":              "10\n",
		"sysctl/kernel.panic_on_oops":      "1\n",
		"sysctl/kernel.keys.root_maxkeys":  "1000000\n",
		"sysctl/kernel.keys.root_maxbytes": "25000000\n",
	}
	for name, content := range files {
		if err := writeFileAtomic(filepath.Join(nodeDir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ---- inside the namespaces: `flarecp node-init` ----

func runNodeInit(args []string) int {
	fs := flag.NewFlagSet("node-init", flag.ContinueOnError)
	dir := fs.String("dir", "", "cluster directory")
	index := fs.Int("index", 0, "node index (addresses)")
	var imports stringList
	fs.Var(&imports, "import", "image archive to import (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Children get SIGKILL when the thread that forked them exits (Pdeathsig): stay on one.
	runtime.LockOSThread()
	sigs := make(chan os.Signal, 2)
	// PID 1 of a namespace gets only the signals it handles.
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	n := newNodeNet(*index)
	nodeDir := filepath.Join(*dir, "node")
	if err := nodeSetup(n, nodeDir); err != nil {
		logf("node-init: %v", err)
		return 1
	}
	self, err := os.Executable()
	if err != nil {
		logf("node-init: %v", err)
		return 1
	}
	binDir := filepath.Dir(self)
	l := &launcher{dir: *dir, self: self, exited: make(chan *child, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-sigs
		cancel()
	}()
	if err := nodeStart(ctx, l, n, nodeDir, binDir, imports); err != nil {
		logf("node-init: %v", err)
		return 1
	}
	logf("node-init: containerd, coredns, kubelet and kube-proxy started")
	select {
	case <-ctx.Done():
		logf("node-init: stopping (every process of the node's PID namespace ends with this one)")
		return 0
	case c := <-l.exited:
		logf("node-init: %s exited (%v); see logs/%s.log", c.name, c.err, c.name)
		return 1
	}
}

// nodeSetup prepares the namespaces: private mounts (a fresh /proc for the new PID namespace;
// tmpfs over the fixed host paths containerd, kubelet and CNI write to), the sysctl values kubelet
// checks, and the network (waits for the launcher's veth end, eth0).
func nodeSetup(n *nodeNet, nodeDir string) error {
	mount := func(src, target, fstype string, flags uintptr, data string) error {
		if err := syscall.Mount(src, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", fstype+":"+src, target, err)
		}
		return nil
	}
	// Nothing mounted here propagates to the host; within the node mounts are shared again
	// (kubelet's volume mounts reach the containers' mount namespaces).
	if err := mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return err
	}
	if err := mount("", "/", "", syscall.MS_REC|syscall.MS_SHARED, ""); err != nil {
		return err
	}
	if err := mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return err
	}
	for _, d := range []string{"/run", "/var/lib", "/var/log"} {
		if err := mount("tmpfs", d, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=755"); err != nil {
			return err
		}
	}
	for _, f := range []string{"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
		"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"} {
		target := "/proc/sys/" + strings.ReplaceAll(f, ".", "/")
		if err := mount(filepath.Join(nodeDir, "sysctl", f), target, "", syscall.MS_BIND, ""); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := net.InterfaceByName("eth0"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the launcher did not give the node its network (eth0) in 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, cmd := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", n.nodeIP + "/30", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", "default", "via", n.hostIP},
	} {
		if out, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
		}
	}
	// Per network namespace: pods route through the node, bridged traffic passes iptables.
	for k, v := range map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
		"net/ipv4/conf/all/route_localnet":    "1",
	} {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in the node's network namespace: %w", k, v, err)
		}
	}
	return nil
}

func nodeStart(ctx context.Context, l *launcher, n *nodeNet, nodeDir, binDir string, imports []string) error {
	sock := filepath.Join(nodeDir, "containerd.sock")
	os.Remove(sock)
	cd, err := l.exec("containerd", filepath.Join(binDir, "containerd"), "--config", filepath.Join(nodeDir, "containerd.toml"))
	if err != nil {
		return err
	}
	ctr := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ctr"), append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...)
		return cmd.CombinedOutput()
	}
	if err := waitFor(ctx, "containerd", 60*time.Second, []*child{cd}, func() (bool, error) {
		out, err := ctr("version")
		if err != nil {
			return false, fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return true, nil
	}); err != nil {
		return err
	}
	for _, f := range imports {
		start := time.Now()
		// The unpacked snapshots are all the node runs from (images are never pulled or pushed
		// here): dropping the layer blobs after unpacking halves the store (the runtime image:
		// ~6.4 GB of layers kept twice otherwise; ctr wants --local for it). CRI's own discard_unpacked_layers does the same.
		out, err := ctr("images", "import", "--local", "--no-unpack=false", "--discard-unpacked-layers", f)
		if err != nil {
			return fmt.Errorf("ctr images import %s: %v: %s", f, err, strings.TrimSpace(string(out)))
		}
		logf("node-init: imported %s in %.1fs", filepath.Base(f), time.Since(start).Seconds())
	}
	out, err := ctr("images", "ls", "-q")
	if err != nil {
		return fmt.Errorf("ctr images ls: %v: %s", err, out)
	}
	var refs []string
	for _, line := range strings.Split(string(out), "\n") {
		r := strings.TrimSpace(line)
		if r != "" && !strings.HasPrefix(r, "sha256:") && !strings.Contains(r, "level=") { // ctr's warnings
			refs = append(refs, r)
		}
	}
	// Pinned: the kubelet's image garbage collector and its eviction manager (which reclaims
	// disk by deleting unused images once the disk is nearly full) skip pinned images. These
	// were imported from archives and can never be pulled again offline: a CI run whose disk
	// filled up once lost every imported image, and each Pod after that ended ErrImageNeverPull.
	for _, r := range refs {
		if out, err := ctr("images", "label", r, "io.cri-containerd.pinned=pinned"); err != nil {
			return fmt.Errorf("ctr images label %s: %v: %s", r, err, strings.TrimSpace(string(out)))
		}
	}
	logf("node-init: images (pinned): %s", strings.Join(refs, " "))
	if !strings.Contains(string(out), pauseImage) {
		return fmt.Errorf("the pause image %s is not in the node's containerd and cannot be pulled offline: "+
			"pass its archive with --import (`make images` builds it)", pauseImage)
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"coredns", []string{filepath.Join(binDir, "coredns"), "-conf", filepath.Join(nodeDir, "Corefile")}},
		{"kubelet", []string{filepath.Join(binDir, "flarecp"), "kubelet",
			"--config=" + filepath.Join(nodeDir, "kubelet.yaml"),
			"--kubeconfig=" + filepath.Join(nodeDir, "kubelet.kubeconfig"),
			"--hostname-override=" + realNodeName,
			"--node-ip=" + n.nodeIP,
			"--root-dir=" + filepath.Join(nodeDir, "kubelet"),
			"--cert-dir=" + filepath.Join(nodeDir, "kubelet", "pki"),
			"--node-labels=flarecp.io/real-node=true",
			"--v=1"}},
		{"kube-proxy", []string{filepath.Join(binDir, "flarecp"), "kube-proxy",
			"--config=" + filepath.Join(nodeDir, "kube-proxy.yaml"), "--v=1"}},
	} {
		if _, err := l.exec(c.name, c.args[0], c.args[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// exec starts a program (not a flarecp component) as a child, logs to logs/<name>.log.
func (l *launcher) exec(name, path string, args ...string) (*child, error) {
	return l.startPath(name, path, &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}, args...)
}

// ---- the launcher's side once the node runs: readiness, GPU capacity, local volumes ----

// nodeServices runs until ctx ends: keeps the advertised nvidia.com/gpu capacity on the real node
// (re-applied if the node re-registers) and provisions flarecp-local volumes.
func nodeServices(ctx context.Context, cs kubernetes.Interface, o upOptions) {
	volumes := filepath.Join(o.dir, "volumes")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if o.realNodeGPUs > 0 {
			if err := advertiseGPUs(ctx, cs, o.realNodeGPUs); err != nil && ctx.Err() == nil {
				logf("nvidia.com/gpu on %s: %v", realNodeName, err)
			}
		}
		if err := provisionVolumes(ctx, cs, volumes); err != nil && ctx.Err() == nil {
			logf("local volumes: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// advertiseGPUs sets the extended resource nvidia.com/gpu on the real node's status: no device
// plugin, no device; the scheduler and kubelet's admission treat it as capacity, so the GPU
// request path is scheduled for real (torch falls back to the CPU in the pod).
func advertiseGPUs(ctx context.Context, cs kubernetes.Interface, gpus int) error {
	node, err := cs.CoreV1().Nodes().Get(ctx, realNodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	want := *resource.NewQuantity(int64(gpus), resource.DecimalSI)
	if q, ok := node.Status.Capacity["nvidia.com/gpu"]; ok && q.Cmp(want) == 0 {
		return nil
	}
	patch := fmt.Sprintf(`[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"%d"}]`, gpus)
	_, err = cs.CoreV1().Nodes().Patch(ctx, realNodeName, types.JSONPatchType, []byte(patch), metav1.PatchOptions{}, "status")
	if err == nil {
		logf("advertised nvidia.com/gpu: %d on %s", gpus, realNodeName)
	}
	return err
}

// provisionVolumes is a small local-path provisioner for the StorageClass flarecp-local: a
// pending claim gets a hostPath PV (a world-writable directory under DIR/volumes, so pods running
// as any uid can write; fsGroup is not applied to hostPath) pinned to the real node; a released
// volume is deleted with its directory.
func provisionVolumes(ctx context.Context, cs kubernetes.Interface, root string) error {
	claims, err := cs.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, c := range claims.Items {
		if c.Spec.StorageClassName == nil || *c.Spec.StorageClassName != localStorage ||
			c.Spec.VolumeName != "" || c.Status.Phase != corev1.ClaimPending || c.DeletionTimestamp != nil {
			continue
		}
		name := "pvc-" + string(c.UID)
		path := filepath.Join(root, name)
		if err := os.MkdirAll(path, 0o777); err != nil {
			return err
		}
		if err := os.Chmod(path, 0o777|os.ModeSticky); err != nil {
			return err
		}
		size := c.Spec.Resources.Requests[corev1.ResourceStorage]
		hostPathType := corev1.HostPathDirectory
		pv := &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
				"pv.kubernetes.io/provisioned-by": localProvisioner}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
				AccessModes:                   c.Spec.AccessModes,
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
				StorageClassName:              localStorage,
				VolumeMode:                    c.Spec.VolumeMode,
				ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
					Namespace: c.Namespace, Name: c.Name, UID: c.UID},
				PersistentVolumeSource: corev1.PersistentVolumeSource{
					HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &hostPathType}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
					NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
						Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{realNodeName}}}}}}},
			},
		}
		if _, err := cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("pv for %s/%s: %w", c.Namespace, c.Name, err)
		}
	}
	pvs, err := cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, pv := range pvs.Items {
		if pv.Annotations["pv.kubernetes.io/provisioned-by"] != localProvisioner || pv.Status.Phase != corev1.VolumeReleased ||
			pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			continue
		}
		if pv.Spec.HostPath != nil && strings.HasPrefix(pv.Spec.HostPath.Path, root+string(os.PathSeparator)) {
			if err := os.RemoveAll(pv.Spec.HostPath.Path); err != nil {
				return err
			}
		}
		if err := cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

const corednsUser = "system:flarecp:coredns"

// nodeRBAC lets CoreDNS read what its kubernetes plugin watches (the role of the same name in
// CoreDNS's own deployment manifests), before CoreDNS starts.
func nodeRBAC(ctx context.Context, cs kubernetes.Interface) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: corednsUser}},
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("clusterrole %s: %w", role.Name, err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("clusterrolebinding %s: %w", binding.Name, err)
	}
	return nil
}

// localStorageClass is the default StorageClass of a cluster with a real node.
func localStorageClass() *storagev1.StorageClass {
	bindImmediate := storagev1.VolumeBindingImmediate
	reclaim := corev1.PersistentVolumeReclaimDelete
	return &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: localStorage, Annotations: map[string]string{
			"storageclass.kubernetes.io/is-default-class": "true"}},
		Provisioner:       localProvisioner,
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &bindImmediate,
	}
}
