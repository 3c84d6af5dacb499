package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// clusterState is DIR/cluster.json, written by `cluster up` once the ports are known.
type clusterState struct {
	Name       string         `json:"name"`
	Server     string         `json:"server"`
	Pid        int            `json:"pid"`
	Ports      map[string]int `json:"ports"`
	Kubeconfig string         `json:"kubeconfig"`
	Version    string         `json:"version"`
}

func readState(dir string) (*clusterState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		return nil, err
	}
	var s clusterState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// kubeconfigBytes renders a self-contained kubeconfig (certificates inlined).
func kubeconfigBytes(name, server string, ca, client *keyPair) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{
		Server:                   server,
		CertificateAuthorityData: certPEM(ca.cert),
	}
	user := client.cert.Subject.CommonName
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: certPEM(client.cert),
		ClientKeyData:         keyPEM(client.key),
	}
	ctx := name
	if !strings.HasPrefix(user, "flarecp-admin") {
		ctx = user + "@" + name
	}
	cfg.Contexts[ctx] = &clientcmdapi.Context{Cluster: name, AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = ctx
	return clientcmd.Write(*cfg)
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// runUserKubeconfig signs a client certificate for a user (CN) and groups (O) with the
// cluster's CA and writes a kubeconfig for it.
func runUserKubeconfig(args []string) int {
	fs := flag.NewFlagSet("user-kubeconfig", flag.ContinueOnError)
	dir := fs.String("dir", "", "cluster directory (as given to `cluster up`)")
	user := fs.String("user", "", "user name (certificate CN)")
	out := fs.String("out", "", "kubeconfig to write")
	var groups stringList
	fs.Var(&groups, "group", "group (certificate O); repeat for several")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || *user == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "user-kubeconfig: --dir, --user and --out are required")
		return 2
	}
	st, err := readState(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "user-kubeconfig: %v (is the cluster up?)\n", err)
		return 1
	}
	ca, err := loadKeyPair(filepath.Join(*dir, "pki"), "ca")
	if err != nil {
		fmt.Fprintf(os.Stderr, "user-kubeconfig: %v\n", err)
		return 1
	}
	kp, err := ca.sign(*user, groups, nil, nil, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "user-kubeconfig: %v\n", err)
		return 1
	}
	b, err := kubeconfigBytes(st.Name, st.Server, ca, kp)
	if err == nil {
		err = writeFileAtomic(*out, b, 0o600)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "user-kubeconfig: %v\n", err)
		return 1
	}
	abs, _ := filepath.Abs(*out)
	fmt.Println(abs)
	return 0
}
