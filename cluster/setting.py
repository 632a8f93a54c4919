"""What a declared setting is, and what is derived from a declaration: the command line's flags, the presets, and
config.json's reading. The settings themselves are declared in cluster/recipe.py (TrainConfig), one field each; this
module knows nothing of AlexNet.

A setting is a dataclass field whose metadata holds a Setting: its flag spellings, help, --help group, and the value
each preset gives it. Adding a setting is adding one such field (docs/DEVELOPING.md, "Adding a setting").
"""
import argparse
import dataclasses
from dataclasses import dataclass, field

REQUIRED = object()  # Setting.absent: an older config.json without the setting cannot be read (its meaning is unknown)
KEY = "setting"  # the dataclass field metadata key holding the Setting


@dataclass(frozen=True)
class Setting:
    """How one TrainConfig field is set. Its name, type and default are the dataclass field's."""
    help: str  # what it does, without the default: "(default: ...)" is appended from `default_text` or the value
    group: str  # the --help section it is listed in
    flags: tuple = ()  # its spellings, the name shown first (short ones first); () for --field-name; None: no flag
    parse: object = None  # the flag's argparse type (None: the field's type for int/float/str)
    choices: tuple | None = None
    action: str | None = None  # "store_true" or "store_false" for a switch
    metavar: str | None = None
    default_text: str | None = None  # the default in words, where it is resolved later or reads better than a value
    presets: dict = field(default_factory=dict)  # {preset name: value}; given: the preset decides the default
    resumable: bool = False  # may change on --resume: where and how the run goes on, not what it computes
    absent: object = REQUIRED  # what an older config.json that lacks the setting meant (the behaviour of its time)


def setting(default, help, *flags, group, no_flag=False, **kw):
    """A TrainConfig field declared as a setting: setting(default, help, "-b", "--batch-size", group=..., ...)."""
    meta = Setting(help=help, group=group, flags=None if no_flag else tuple(flags), **kw)
    return field(default=default, metadata={KEY: meta})


def derived(default):
    """A field computed from the settings (not set by anyone): written to config.json for people."""
    return field(default=default, metadata={KEY: None})


def declared(cls):
    """[(dataclasses.Field, Setting)] of a config class, in declaration order (derived fields left out)."""
    return [(f, f.metadata[KEY]) for f in dataclasses.fields(cls) if f.metadata.get(KEY) is not None]


def spellings(f, s):
    """A flag setting's spellings, as declared or --field-name."""
    return s.flags or ("--" + f.name.replace("_", "-"),)


def flag_name(cls, name):
    """How messages name a setting's flag: its short spellings and its first long one (-j/--threads, --replicas)."""
    f, s = next((f, s) for f, s in declared(cls) if f.name == name)
    if s.flags is None:
        return name
    flags = spellings(f, s)
    short = [x for x in flags if not x.startswith("--")]
    return "/".join(short + [next(x for x in flags if x.startswith("--"))])


def preset_names(cls):
    return tuple(dict.fromkeys(p for _, s in declared(cls) for p in s.presets))


def make_presets(cls):
    """{preset name: a frozen dataclass of the values that preset gives}, one attribute per preset setting."""
    fields = [(f.name, f.type) for f, s in declared(cls) if s.presets]
    preset_type = dataclasses.make_dataclass("Preset", fields, frozen=True)
    preset_type.__doc__ = "The values a preset gives the settings the user left out."
    return {p: preset_type(**{f.name: s.presets[p] for f, s in declared(cls) if s.presets})
            for p in preset_names(cls)}


def _default_text(f, s):
    if s.default_text is not None:
        return s.default_text
    if s.presets:
        return "from --preset: " + ", ".join(f"{p}={_shown(v)}" for p, v in s.presets.items())
    if s.action:
        return "on" if f.default else "off"
    return _shown(f.default)


def _shown(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_text(f, s):
    return f"{s.help} (default: {_default_text(f, s)})"


def add_flags(parser, cls, *, suppress_defaults=False):
    """Add every flag setting of `cls` to `parser`, one argument group per Setting.group in declaration order.
    Returns {group title: the argument group} so that a command can add its own (non-setting) flags to one.
    The argparse default is the field's, or None where a preset decides (the resolver fills it in);
    suppress_defaults: only flags given on the command line appear in the parsed namespace."""
    groups = {}
    for f, s in declared(cls):
        if s.group not in groups:
            groups[s.group] = parser.add_argument_group(s.group)
        if s.flags is None:
            continue
        kw = dict(dest=f.name, help=help_text(f, s))
        if s.action:
            kw["action"] = s.action
        else:
            kw.update(type=s.parse or f.type, choices=s.choices, metavar=s.metavar)
        kw["default"] = argparse.SUPPRESS if suppress_defaults else (None if s.presets else f.default)
        groups[s.group].add_argument(*spellings(f, s), **kw)
    return groups


def explicit(parser_factory, cls, argv):
    """{field name: the flag as the user typed it} for the settings given in `argv`, so --resume can tell them from
    defaults and name them as written (--no-lrn, not lrn; all of a flag's spellings where it was abbreviated).
    parser_factory(suppress_defaults) builds the command's parser."""
    given = vars(parser_factory(suppress_defaults=True).parse_args(argv))
    typed = {flag: f.name for f, s in declared(cls) if s.flags is not None for flag in spellings(f, s)}
    every = {f.name: "/".join(spellings(f, s)) for f, s in declared(cls) if s.flags is not None}
    out = {name: every[name] for name in given if name in every}
    for token in argv:
        name = typed.get(token.split("=", 1)[0])
        if name in out:
            out[name] = token.split("=", 1)[0]
    return out


def from_saved(cls, saved, source):
    """A `cls` from a config.json's dict: a setting missing from an older file takes the value declared as what its
    absence meant; one without such a value, or a key this code does not know, is an error naming `source`."""
    names = {f.name: f.metadata.get(KEY) for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - set(names))
    if unknown:
        raise ValueError(f"{source}: unknown settings {unknown}: written by another version of this code?")
    values = {}
    for name, s in names.items():
        if name in saved:
            value = saved[name]
            values[name] = tuple(value) if isinstance(value, list) else value  # JSON has no tuples
        elif s is not None and s.absent is not REQUIRED:
            values[name] = s.absent
        elif s is not None:
            raise ValueError(f"{source}: missing setting {name!r}: written by another version of this code?")
    return cls(**values)


def command_line(cfg, skip=()):
    """The flags that make the launcher resolve `cfg`'s settings: --preset, then every flag setting whose value is
    not what that preset or the declaration gives (settings in `skip` left out). A setting without a flag that
    differs from its preset cannot be given on the command line: ValueError naming it."""
    flags = ["--preset", cfg.preset]
    for f, s in declared(type(cfg)):
        value = getattr(cfg, f.name)
        if f.name in ("preset", *skip) or value == (s.presets.get(cfg.preset, f.default) if s.presets else f.default):
            continue
        if s.flags is None:
            raise ValueError(f"{f.name}={value!r} differs from preset {cfg.preset}'s and has no flag")
        flag = spellings(f, s)[0]
        if s.action:
            flags.append(flag)  # a switch differs from its default only one way
        else:
            flags += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags
