import json, shlex, subprocess, sys
db = json.load(open('/work/main/build/g/compile_commands.json'))
want = sys.argv[1:]
rc = 0
for e in db:
    f = e['file']
    if not any(f.endswith(w) for w in want): continue
    args = shlex.split(e['command'])
    out = ['clang++-16']
    skip = False
    for a in args[1:]:
        if skip: skip = False; continue
        if a in ('-o', '-MQ', '-MF'): skip = True; continue
        if a in ('-MD', '-c'): continue
        out.append(a)
    out.append('-fsyntax-only')
    r = subprocess.run(out, cwd=e['directory'], capture_output=True, text=True)
    print(f, 'rc', r.returncode); 
    if r.stderr: print(r.stderr[:3000])
    rc |= r.returncode
sys.exit(rc)
