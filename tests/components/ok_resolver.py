"""ok_resolver: a cyanprintsdk resolver that joins all versions of a file in
``origin.layer`` order with ``config.separator`` (default ``"\\n"``) and answers the
path of the first (lowest-layer) version."""

from cyanprintsdk.domain.resolver.input import ResolverInput
from cyanprintsdk.domain.resolver.output import ResolverOutput
from cyanprintsdk.main import start_resolver_with_fn


async def resolve(i: ResolverInput) -> ResolverOutput:
    separator = str(i.config.get("separator", "\n"))
    versions = sorted(i.files, key=lambda f: f.origin.layer)
    return ResolverOutput(
        path=versions[0].path,
        content=separator.join(f.content for f in versions),
    )


if __name__ == "__main__":
    start_resolver_with_fn(resolve)
