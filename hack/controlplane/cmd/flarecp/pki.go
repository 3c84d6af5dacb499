package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is long enough for any test session or a person's dev cluster.
const certValidity = 5 * 365 * 24 * time.Hour

type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err)
	}
	return n
}

func newECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func newCA(cn string) (*keyPair, error) {
	key := newECKey()
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now,
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

// sign issues a leaf certificate. Client certs get CN=user, O=groups; serving certs get SANs.
func (ca *keyPair) sign(cn string, orgs []string, dns []string, ips []net.IP, server bool) (*keyPair, error) {
	key := newECKey()
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    now,
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// writeFileAtomic writes data to a temporary file next to path and renames it into place, so
// that a reader never sees a half-written file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (kp *keyPair) write(dir, name string) error {
	if err := writeFileAtomic(filepath.Join(dir, name+".crt"), certPEM(kp.cert), 0o644); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, name+".key"), keyPEM(kp.key), 0o600)
}

func loadKeyPair(dir, name string) (*keyPair, error) {
	cb, err := os.ReadFile(filepath.Join(dir, name+".crt"))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, fmt.Errorf("%s: bad PEM", name)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key is not a signer")
	}
	return &keyPair{cert: cert, key: signer}, nil
}

// pkiSet is everything the control plane needs, under DIR/pki.
type pkiSet struct {
	dir   string
	ca    *keyPair
	admin *keyPair
	kcm   *keyPair
	sched *keyPair
}

// ensurePKI creates DIR/pki. The CA and service-account key are kept across restarts of the
// same DIR (so user kubeconfigs and tokens stay valid); leaf certs are re-issued every time.
func ensurePKI(dir string, extraIPs []net.IP) (*pkiSet, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := loadKeyPair(dir, "ca")
	if err != nil {
		if ca, err = newCA("flarecp-ca"); err != nil {
			return nil, err
		}
		if err := ca.write(dir, "ca"); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sa.key")); err != nil {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(filepath.Join(dir, "sa.key"), keyPEM(k), 0o600); err != nil {
			return nil, err
		}
		pub, err := x509.MarshalPKIXPublicKey(k.Public())
		if err != nil {
			return nil, err
		}
		if err := writeFileAtomic(filepath.Join(dir, "sa.pub"),
			pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
			return nil, err
		}
	}
	serving, err := ca.sign("kube-apiserver", nil,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		append([]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1"), net.IPv6loopback}, extraIPs...), true)
	if err != nil {
		return nil, err
	}
	if err := serving.write(dir, "apiserver"); err != nil {
		return nil, err
	}
	p := &pkiSet{dir: dir, ca: ca}
	if p.admin, err = ca.sign("flarecp-admin", []string{"system:masters"}, nil, nil, false); err != nil {
		return nil, err
	}
	if p.kcm, err = ca.sign("system:kube-controller-manager", nil, nil, nil, false); err != nil {
		return nil, err
	}
	if p.sched, err = ca.sign("system:kube-scheduler", nil, nil, nil, false); err != nil {
		return nil, err
	}
	// The apiserver's identity towards kubelets (logs, exec, port-forward).
	kc, err := ca.sign("kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, false)
	if err != nil {
		return nil, err
	}
	if err := kc.write(dir, "apiserver-kubelet-client"); err != nil {
		return nil, err
	}
	return p, nil
}
