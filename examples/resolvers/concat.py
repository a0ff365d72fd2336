"""concat: a CyanPrint resolver that joins every version of a conflicting file,
in processor order (``origin.layer``), with ``config.separator`` (default ``""``)
between versions. The order of ``files`` in the request does not matter.
"""

from cyanprintsdk.domain.resolver.input import ResolverInput
from cyanprintsdk.domain.resolver.output import ResolverOutput
from cyanprintsdk.main import start_resolver_with_fn


async def resolve(i: ResolverInput) -> ResolverOutput:
    separator = str(i.config.get("separator", ""))
    versions = sorted(i.files, key=lambda f: f.origin.layer)
    return ResolverOutput(
        path=versions[0].path,
        content=separator.join(f.content for f in versions),
    )


if __name__ == "__main__":
    start_resolver_with_fn(resolve)
