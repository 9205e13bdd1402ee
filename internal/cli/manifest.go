package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/structpb"

	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/schema"
)

// Document is one YAML document of a manifest file, with where it came from.
type Document struct {
	File  string // as the user named it; "-" for standard input
	Index int    // 1-based position in the file
	Line  int    // line where the document starts
	node  *yaml.Node
	Res   *pb.Resource
}

// Where names the document within its file: `document 2 (Tenant "fin")`.
func (d *Document) Where() string {
	s := fmt.Sprintf("document %d", d.Index)
	if d.Res != nil && d.Res.GetKind() != "" {
		s += fmt.Sprintf(" (%s %q)", d.Res.GetKind(), d.Res.GetMetadata().GetName())
	}
	return s
}

// LineOf finds the line of a field path such as "spec.names[0]" in the
// document; it returns the document's line when the path is not there.
func (d *Document) LineOf(path string) int {
	n := d.node
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := d.Line
	for _, step := range splitPath(path) {
		if n == nil {
			break
		}
		var next *yaml.Node
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == step {
					line = n.Content[i].Line
					next = n.Content[i+1]
				}
			}
		case yaml.SequenceNode:
			if i, err := strconv.Atoi(step); err == nil && i >= 0 && i < len(n.Content) {
				next = n.Content[i]
				line = next.Line
			}
		}
		n = next
	}
	return line
}

var pathStep = regexp.MustCompile(`[^.\[\]"]+|\["([^"]*)"\]`)

func splitPath(path string) []string {
	var out []string
	for _, m := range pathStep.FindAllStringSubmatch(path, -1) {
		if m[1] != "" {
			out = append(out, m[1])
		} else {
			out = append(out, m[0])
		}
	}
	return out
}

// ManifestError is a problem in one document (or a whole file when Doc is nil).
type ManifestError struct {
	File  string
	Doc   *Document
	Field string
	Msg   string
}

func (e *ManifestError) Error() string {
	switch {
	case e.Doc == nil:
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Field == "":
		return fmt.Sprintf("%s:%d: %s: %s", e.Doc.File, e.Doc.Line, e.Doc.Where(), e.Msg)
	default:
		return fmt.Sprintf("%s:%d: %s: %s: %s", e.Doc.File, e.Doc.LineOf(e.Field), e.Doc.Where(), e.Field, e.Msg)
	}
}

// ReadManifests reads every document of every path (a file, a directory of
// .yaml/.yml/.json files, or "-" for stdin). It returns every problem it
// finds, not just the first; the documents are usable only when errs is empty.
func ReadManifests(paths []string, stdin io.Reader) (docs []*Document, errs []error) {
	var files []string
	for _, p := range paths {
		if p == "-" {
			files = append(files, p)
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, errors.Unwrap(err)))
			continue
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var inDir []string
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					inDir = append(inDir, filepath.Join(p, e.Name()))
				}
			}
		}
		sort.Strings(inDir)
		if len(inDir) == 0 {
			errs = append(errs, fmt.Errorf("%s: no .yaml, .yml or .json files in this directory", p))
		}
		files = append(files, inDir...)
	}
	for _, f := range files {
		var (
			data []byte
			err  error
		)
		if f == "-" {
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(f)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		d, e := parseFile(f, data)
		docs = append(docs, d...)
		errs = append(errs, e...)
	}
	if len(docs) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: no documents found", strings.Join(paths, ", ")))
	}
	return docs, errs
}

var yamlLine = regexp.MustCompile(`^line (\d+): `)

var topLevel = map[string]bool{"apiVersion": true, "kind": true, "metadata": true, "spec": true, "status": true}

func parseFile(file string, data []byte) (docs []*Document, errs []error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 1; ; i++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			return docs, errs
		}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "yaml: ")
			where := file
			if m := yamlLine.FindStringSubmatch(msg); m != nil {
				where, msg = file+":"+m[1], msg[len(m[0]):]
			}
			return docs, append(errs, &ManifestError{File: where, Msg: fmt.Sprintf("document %d: malformed YAML: %s", i, msg)})
		}
		doc := &Document{File: file, Index: i, Line: node.Line, node: &node}
		if len(node.Content) == 0 || node.Content[0].Tag == "!!null" {
			continue // an empty document, e.g. after a trailing "---"
		}
		res, derrs := toResource(doc)
		doc.Res = res
		errs = append(errs, derrs...)
		docs = append(docs, doc)
	}
}

func toResource(doc *Document) (*pb.Resource, []error) {
	var v any
	if err := doc.node.Decode(&v); err != nil {
		return nil, []error{&ManifestError{Doc: doc, Msg: "malformed YAML: " + err.Error()}}
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, []error{&ManifestError{Doc: doc, Msg: fmt.Sprintf("expected a resource (a mapping with apiVersion, kind, metadata, spec), got %T", v)}}
	}
	var errs []error
	res := &pb.Resource{}
	res.ApiVersion, _ = m["apiVersion"].(string)
	res.Kind, _ = m["kind"].(string)
	doc.Res = res
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !topLevel[k] {
			errs = append(errs, &ManifestError{Doc: doc, Field: k, Msg: "unknown field: a resource has apiVersion, kind, metadata, spec and status"})
		}
	}
	for _, k := range []string{"apiVersion", "kind"} {
		if _, isString := m[k].(string); m[k] != nil && !isString {
			errs = append(errs, &ManifestError{Doc: doc, Field: k, Msg: fmt.Sprintf("expected a string, got %T", m[k])})
		}
	}
	if md, ok := m["metadata"]; ok {
		res.Metadata = &pb.Metadata{}
		if err := schema.Decode("metadata", md, res.Metadata); err != nil {
			errs = append(errs, fieldErrors(doc, err)...)
		}
	}
	if spec, ok := m["spec"]; ok && spec != nil {
		sm, ok := spec.(map[string]any)
		if !ok {
			errs = append(errs, &ManifestError{Doc: doc, Field: "spec", Msg: fmt.Sprintf("expected a mapping, got %T", spec)})
		} else if s, err := structpb.NewStruct(sm); err != nil {
			errs = append(errs, &ManifestError{Doc: doc, Field: "spec", Msg: err.Error()})
		} else {
			res.Spec = s
		}
	}
	return res, errs
}

func fieldErrors(doc *Document, err error) []error {
	var fes schema.Errors
	if !errors.As(err, &fes) {
		return []error{&ManifestError{Doc: doc, Msg: err.Error()}}
	}
	out := make([]error, 0, len(fes))
	for _, fe := range fes {
		out = append(out, &ManifestError{Doc: doc, Field: fe.Path, Msg: fe.Message})
	}
	return out
}
