"""What an analyst's SQL may do, decided on a parse tree (sqlglot's ClickHouse dialect).

The check reads the query the way a SQL engine does, not by scanning words: a
quoted name (`` `file`(…) ``), a comment between a name and its parenthesis or
an odd casing cannot hide a call, because the parser resolves each of them to
the same node. Allowed is exactly:

* one ``SELECT`` (with ``WITH``/CTEs, joins, subqueries, ``UNION``/``INTERSECT``/
  ``EXCEPT``, ``FINAL``, ``SAMPLE``, ``ARRAY JOIN``, window functions, lambdas),
  or ``SHOW TABLES``, or ``DESCRIBE [TABLE] <table>``;
* tables of the project's own database (unqualified names resolve there) and
  names the query defines itself (CTEs); no other database, no ``system.*``,
  no table function at all (``numbers()``, ``file()``, ``url()``, ``s3()``…);
* functions from :data:`SCALAR_FUNCTIONS`, :data:`AGGREGATE_FUNCTIONS` (also with
  the combinators of :data:`AGGREGATE_COMBINATORS`) and :data:`WINDOW_FUNCTIONS`,
  matched case-insensitively on the name sqlglot resolves; a function sqlglot
  knows under a node type of its own counts only when :data:`TYPED_FUNCTIONS`
  names it, and any other node type is refused (:data:`SYNTAX_NODES` lists the
  allowed ones);
* no ``SETTINGS`` (the session's limits are not the caller's to change), no
  ``FORMAT`` (the request's format replaces it), no ``INTO OUTFILE``, no query
  parameters.

Refusals are :class:`SqlRefused`: 403 when the policy says no, 400 when the
query cannot be read (or holds ``FORMAT``), each with a message that says what
was refused and what is allowed.

>>> check_query("SELECT agent_id, count() FROM metrics FINAL GROUP BY agent_id", "agentwatch").kind
'select'
>>> try:
...     check_query("SELECT `file`('/etc/hostname', 'LineAsString')", "agentwatch")
... except SqlRefused as refused:
...     print(refused.status, refused.message[:63])
403 function file() is not allowed here: it is not on the allowlist
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import sqlglot
from clickhouse_connect.driver.binding import quote_identifier
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

# sqlglot warns, with the query's text, when it falls back to a generic command (SET,
# INSERT…); the API logs each refusal itself, once, so its warnings are only noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECT = "clickhouse"

#: Deepest nesting of parentheses and brackets read: sqlglot's recursive parser needs
#: about 20 Python frames a level, so far deeper queries would end in a RecursionError.
MAX_NESTING = 32


def _names(text: str) -> frozenset[str]:
    return frozenset(name.lower() for name in text.split())


def _node_types(text: str) -> tuple[type[exp.Expression], ...]:
    """The sqlglot node classes named in ``text`` (a name sqlglot lacks fails at import)."""
    return tuple(getattr(exp, name) for name in text.split())


def _typed_functions(text: str) -> dict[type[exp.Func], str]:
    """``Node=clickhouseName`` pairs of ``text`` as a mapping of sqlglot classes to names."""
    pairs = (pair.partition("=") for pair in text.split())
    return {getattr(exp, node): name for node, _, name in pairs}


_NUMBER_TYPES = _names(
    "Int8 Int16 Int32 Int64 Int128 Int256 UInt8 UInt16 UInt32 UInt64 UInt128 UInt256 "
    "Float32 Float64 Decimal32 Decimal64 Decimal128 Decimal256"
)

#: Scalar functions an analyst may call: arithmetic, comparison, logic, conditionals, maths,
#: rounding, NULLs, conversions, dates, strings, search, regular expressions (RE2: linear
#: time), URLs, IP addresses, hashes, arrays (with lambdas), tuples, maps and JSON. Left out
#: on purpose: anything that reads outside the query's tables or tells about the server
#: (``file``, ``url``, ``dictGet*``, ``joinGet``, ``getSetting``, ``currentUser``,
#: ``hostName``, ``version``, ``filesystem*``, ``getMacro``, ``hasColumnInTable``…),
#: anything that takes another function's name as a string (``arrayReduce``,
#: ``initializeAggregation``), ``sleep``/``throwIf``, introspection, encryption,
#: machine-learning and AI functions.
SCALAR_FUNCTIONS = _names(
    """
    abs plus minus multiply divide intDiv intDivOrZero modulo moduloOrZero mod negate gcd lcm
    max2 min2 isFinite isInfinite isNaN ifNotFinite positiveModulo pmod
    equals notEquals less greater lessOrEquals greaterOrEquals isDistinctFrom isNotDistinctFrom
    and or not xor
    if multiIf greatest least clamp
    exp exp2 exp10 log ln log2 log10 log1p sqrt cbrt pow power sin cos tan asin acos atan atan2
    sinh cosh tanh erf erfc lgamma tgamma pi e sign degrees radians hypot sigmoid widthBucket
    round roundBankers floor ceil ceiling trunc truncate roundToExp2 roundDown roundDuration
    roundAge
    coalesce ifNull nullIf isNull isNotNull assumeNotNull toNullable isZeroOrNull
    CAST accurateCast accurateCastOrNull accurateCastOrDefault toString toFixedString toBool
    toDate toDate32 toDateTime toDateTime64 toDateOrNull toDateOrZero toDate32OrNull
    toDateTimeOrNull toDateTimeOrZero toDateTime64OrNull toDateTime64OrZero toUUID
    toUUIDOrNull toUUIDOrZero toLowCardinality toDecimalString toTypeName
    toIntervalSecond toIntervalMinute toIntervalHour toIntervalDay toIntervalWeek
    toIntervalMonth toIntervalQuarter toIntervalYear toIntervalMillisecond
    toIntervalMicrosecond
    parseDateTime parseDateTimeOrNull parseDateTime64 parseDateTimeBestEffort
    parseDateTimeBestEffortOrNull parseDateTimeBestEffortOrZero parseDateTime64BestEffort
    parseDateTime64BestEffortOrNull parseDateTimeBestEffortUS
    fromUnixTimestamp64Second fromUnixTimestamp64Milli fromUnixTimestamp64Micro
    fromUnixTimestamp64Nano toUnixTimestamp64Second toUnixTimestamp64Milli
    toUnixTimestamp64Micro toUnixTimestamp64Nano
    now now64 today yesterday toYear toQuarter toMonth toDayOfMonth toDayOfWeek toDayOfYear
    toHour toMinute toSecond toMillisecond toMicrosecond toUnixTimestamp toStartOfYear
    toStartOfQuarter toStartOfMonth toStartOfWeek toMonday toStartOfDay toStartOfHour
    toStartOfMinute toStartOfSecond toStartOfFiveMinutes toStartOfTenMinutes
    toStartOfFifteenMinutes toStartOfInterval toStartOfMillisecond toStartOfMicrosecond
    toLastDayOfMonth toLastDayOfWeek toISOWeek toISOYear toWeek toYearWeek toYYYYMM toYYYYMMDD
    toYYYYMMDDhhmmss toRelativeYearNum toRelativeMonthNum toRelativeWeekNum toRelativeDayNum
    toRelativeHourNum toRelativeMinuteNum toRelativeSecondNum toTimezone timeSlot dateDiff age
    dateTrunc dateName monthName formatDateTime formatDateTimeInJodaSyntax fromUnixTimestamp
    addYears addQuarters addMonths addWeeks addDays addHours addMinutes addSeconds
    addMilliseconds addMicroseconds addNanoseconds subtractYears subtractQuarters
    subtractMonths subtractWeeks subtractDays subtractHours subtractMinutes subtractSeconds
    subtractMilliseconds subtractMicroseconds subtractNanoseconds addInterval subtractInterval
    makeDate makeDate32 makeDateTime makeDateTime64 toDaysSinceYearZero fromDaysSinceYearZero
    length lengthUTF8 empty notEmpty lower upper lowerUTF8 upperUTF8 reverse reverseUTF8 concat
    concatWithSeparator substring substringUTF8 left right leftUTF8 rightUTF8 leftPad rightPad
    leftPadUTF8 rightPadUTF8 trimBoth trimLeft trimRight startsWith endsWith startsWithUTF8
    endsWithUTF8 position positionCaseInsensitive positionUTF8 locate like notLike ilike
    notILike match extract extractAll extractGroups extractAllGroupsHorizontal
    extractAllGroupsVertical regexpExtract countSubstrings countMatches hasToken
    multiSearchAny replaceAll replaceOne replaceRegexpAll replaceRegexpOne regexpQuoteMeta
    splitByChar splitByString splitByRegexp splitByWhitespace splitByNonAlpha
    arrayStringConcat alphaTokens format printf repeat space base64Encode base64Decode
    tryBase64Decode hex unhex bin unbin toValidUTF8 isValidUTF8 ascii char
    initcap firstLine formatReadableSize formatReadableQuantity formatReadableTimeDelta
    formatReadableDecimalSize parseReadableSize bar visibleWidth
    domain domainWithoutWWW topLevelDomain protocol path pathFull queryString fragment
    extractURLParameter extractURLParameters extractURLParameterNames cutQueryString
    cutFragment cutWWW netloc port firstSignificantSubdomain cutToFirstSignificantSubdomain
    URLHierarchy URLPathHierarchy decodeURLComponent encodeURLComponent
    IPv4NumToString IPv4StringToNum IPv6NumToString IPv6StringToNum toIPv4 toIPv6 toIPv4OrNull
    toIPv6OrNull isIPv4String isIPv6String isIPAddressInRange IPv4CIDRToRange IPv6CIDRToRange
    IPv4ToIPv6 cutIPv6
    cityHash64 sipHash64 sipHash128 xxHash32 xxHash64 xxh3 murmurHash3_32 murmurHash3_64
    murmurHash3_128 farmHash64 MD5 SHA1 SHA224 SHA256 SHA512 halfMD5 intHash32 intHash64
    javaHash CRC32 URLHash generateUUIDv4 generateUUIDv7 UUIDStringToNum UUIDNumToString
    rand rand32 rand64 randCanonical randUniform randNormal
    bitAnd bitOr bitXor bitNot bitShiftLeft bitShiftRight bitCount bitTest bitTestAll bitTestAny
    array range arrayJoin has hasAll hasAny hasSubstr indexOf countEqual arrayConcat
    arrayElement arraySlice arrayPushBack arrayPushFront arrayPopBack arrayPopFront arrayResize
    arrayEnumerate arrayEnumerateUniq arrayEnumerateDense arrayUniq arrayDistinct arrayCompact
    arrayReverse arraySort arrayReverseSort arrayPartialSort arrayFlatten flatten arrayZip
    arrayMap arrayFilter arrayExists arrayAll arrayCount arraySum arrayAvg arrayMin arrayMax
    arrayProduct arrayCumSum arrayDifference arrayFirst arrayLast arrayFirstIndex
    arrayLastIndex arrayFirstOrNull arrayLastOrNull arrayFill arrayReverseFill arraySplit
    arrayReverseSplit arrayIntersect arrayUnion arrayExcept arraySymmetricDifference
    arrayShingles arrayWithConstant arrayFold arrayRotateLeft arrayRotateRight arrayShiftLeft
    arrayShiftRight replicate arrayJaccardIndex arrayDotProduct
    tuple tupleElement map mapKeys mapValues mapContains mapContainsKey mapFilter mapApply
    mapFromArrays mapAdd mapSubtract mapUpdate mapConcat mapSort mapExists mapAll
    JSONHas JSONLength JSONType JSONExtract JSONExtractString JSONExtractInt JSONExtractUInt
    JSONExtractFloat JSONExtractBool JSONExtractRaw JSONExtractArrayRaw JSONExtractKeys
    JSONExtractKeysAndValues JSONExtractKeysAndValuesRaw JSONArrayLength simpleJSONHas
    simpleJSONExtractString simpleJSONExtractInt simpleJSONExtractUInt simpleJSONExtractFloat
    simpleJSONExtractBool simpleJSONExtractRaw JSON_VALUE JSON_QUERY JSON_EXISTS toJSONString
    isValidJSON
    transform runningDifference materialize
    """
    + " ".join(f"to{t}{s}" for t in _NUMBER_TYPES for s in ("", "OrNull", "OrZero", "OrDefault"))
)

#: Aggregate functions (with :data:`AGGREGATE_COMBINATORS`: ``countIf``, ``sumState``,
#: ``uniqMerge``, ``avgOrNull``…).
AGGREGATE_FUNCTIONS = _names(
    """
    count sum avg min max any anyLast anyHeavy any_value argMin argMax min_by max_by uniq
    uniqExact uniqCombined uniqCombined64 uniqHLL12 uniqUpTo groupArray groupArraySample
    groupArraySorted groupArrayLast groupArrayMovingAvg groupArrayMovingSum groupUniqArray
    groupConcat group_concat string_agg array_agg groupBitAnd groupBitOr groupBitXor topK
    topKWeighted approx_top_k
    median medianExact medianTDigest medianTiming medianDeterministic
    quantile quantileExact quantileExactLow quantileExactHigh quantileExactWeighted
    quantileTDigest quantileTDigestWeighted quantileTiming quantileTimingWeighted
    quantileDeterministic quantileBFloat16 quantileDD quantileGK quantileInterpolatedWeighted
    quantiles quantilesExact quantilesExactLow quantilesExactHigh quantilesExactWeighted
    quantilesTDigest quantilesTDigestWeighted quantilesTiming quantilesTimingWeighted
    quantilesDeterministic quantilesBFloat16 quantilesDD quantilesGK
    stddevPop stddevSamp varPop varSamp stddevPopStable stddevSampStable varPopStable
    varSampStable STD STDDEV STDDEV_POP STDDEV_SAMP VAR_POP VAR_SAMP COVAR_POP COVAR_SAMP
    covarPop covarSamp corr corrStable skewPop skewSamp kurtPop kurtSamp avgWeighted sumKahan
    sumWithOverflow sumCount deltaSum deltaSumTimestamp histogram simpleLinearRegression
    entropy exponentialMovingAverage retention windowFunnel sequenceMatch sequenceCount
    boundingRatio rankCorr welchTTest studentTTest mannWhitneyUTest intervalLengthSum
    maxIntersections sparkbar singleValueOrNull largestTriangleThreeBuckets
    nonNegativeDerivative
    regr_slope regr_intercept regr_r2 regr_count regr_avgx regr_avgy regr_sxx regr_syy regr_sxy
    """
)

#: Window functions (``… OVER (PARTITION BY … ORDER BY …)``).
WINDOW_FUNCTIONS = _names(
    """
    row_number rank dense_rank denseRank percent_rank percentRank cume_dist ntile lag lead
    lagInFrame leadInFrame first_value last_value nth_value
    """
)

#: Suffixes ClickHouse combines with an aggregate function (``sum`` + ``If`` = ``sumIf``).
#: ``-Resample`` is left out (it multiplies the states kept), as is ``-Null``.
AGGREGATE_COMBINATORS = tuple(
    sorted(
        _names(
            "If Array Merge MergeState State SimpleState OrNull OrDefault Distinct ForEach Map "
            "ArgMin ArgMax"
        ),
        key=len,
        reverse=True,
    )
)

#: Functions sqlglot parses into a node type of its own, and the ClickHouse name each stands
#: for. A function node of any other type is refused, so a function sqlglot learns to type
#: in a later version cannot slip past the allowlist.
TYPED_FUNCTIONS: dict[type[exp.Func], str] = _typed_functions(
    """
        Abs=abs Acos=acos AnyValue=any ApproxDistinct=uniq ApproxTopK=approx_top_k ArgMax=argMax
        ArgMin=argMin ArrayAgg=array_agg ArrayCompact=arrayCompact ArrayConcat=arrayConcat
        ArrayContains=has ArrayDistinct=arrayDistinct ArrayExcept=arrayExcept
        ArrayFilter=arrayFilter ArrayMax=arrayMax ArrayMin=arrayMin ArrayReverse=arrayReverse
        ArraySlice=arraySlice ArraySum=arraySum Ascii=ascii Asin=asin Atan=atan Atan2=atan2
        Avg=avg BitwiseAndAgg=groupBitAnd BitwiseOrAgg=groupBitOr BitwiseXorAgg=groupBitXor
        Cbrt=cbrt Ceil=ceil Chr=char CityHash64=cityHash64 Coalesce=coalesce Concat=concat
        Corr=corr Cos=cos Cosh=cosh Count=count CountIf=countIf CovarPop=covarPop
        CovarSamp=covarSamp CumeDist=cume_dist DateDiff=dateDiff DateTrunc=dateTrunc
        DayOfWeekIso=toDayOfWeek Degrees=degrees DenseRank=dense_rank EndsWith=endsWith Exp=exp
        Explode=arrayJoin FirstValue=first_value Flatten=flatten Floor=floor Format=format
        Greatest=greatest GroupConcat=groupConcat Hex=hex If=if Initcap=initcap IsInf=isInfinite
        IsNan=isNaN JSONExtract=JSONExtractRaw JSONExtractScalar=JSONExtractString
        Lag=lag LastValue=last_value Lead=lead
        Least=least Left=left Length=length Ln=ln Log=log Lower=lower
        MD5Digest=MD5 Max=max Min=min Monthname=monthName NthValue=nth_value Ntile=ntile
        Nullif=nullIf Pad=leftPad ParseDatetime=parseDateTime PercentRank=percent_rank Pi=pi
        Pow=pow Quantile=quantile Radians=radians Rand=rand Rank=rank RegexpCount=countMatches
        RegexpExtract=regexpExtract RegexpLike=match RegexpSplit=splitByRegexp RegrAvgx=regr_avgx
        RegrAvgy=regr_avgy RegrCount=regr_count RegrIntercept=regr_intercept RegrR2=regr_r2
        RegrSlope=regr_slope RegrSxx=regr_sxx RegrSxy=regr_sxy RegrSyy=regr_syy Repeat=repeat
        Reverse=reverse Right=right Round=round RowNumber=row_number SHA=SHA1 SHA2=SHA256
        Sign=sign Sin=sin Sinh=sinh Space=space Split=splitByString Sqrt=sqrt
        StartsWith=startsWith Stddev=stddevSamp StddevPop=stddevPop StddevSamp=stddevSamp
        StrPosition=position Struct=tuple Substring=substring Sum=sum Tan=tan Tanh=tanh
        TimeToStr=formatDateTime TimestampTrunc=dateTrunc Transform=arrayMap Trim=trimBoth
        Trunc=trunc Typeof=toTypeName Unhex=unhex Upper=upper VarMap=map Variance=varSamp
        VariancePop=varPop WeekOfYear=toISOWeek Xor=xor YearOfWeekIso=toISOYear
    """
)

#: Function nodes that are syntax rather than a call of a named function.
SYNTAX_FUNCTIONS: tuple[type[exp.Func], ...] = (
    exp.Array,  # [1, 2]
    exp.Case,  # CASE WHEN … END
    exp.Cast,  # CAST(x AS T), x::T
    exp.TryCast,
    exp.CastToStrType,  # CAST(x, 'T')
    exp.Columns,  # COLUMNS('regexp'): columns of the tables in FROM
    exp.Extract,  # EXTRACT(YEAR FROM t)
    exp.Exists,  # EXISTS (SELECT …)
)

#: Every other node type a query may hold; anything else is refused.
SYNTAX_NODES: tuple[type[exp.Expression], ...] = _node_types(
    """
        Select Union Intersect Except Subquery With CTE TableAlias From Join Table Final
        TableSample Where PreWhere Group Rollup Cube GroupingSets Having Qualify Order Ordered
        WithFill Limit Offset Distinct Window WindowSpec Column Identifier Literal Star Alias
        Aliases Paren Tuple Neg Not Null Boolean Interval Var DataType DataTypeParam Lambda
        Bracket Dot HexString BitString RawString Add Sub Mul Div IntDiv Mod EQ NEQ NullSafeEQ
        NullSafeNEQ GT GTE LT LTE And Or Is In Between Like ILike Escape DPipe BitwiseAnd
        BitwiseOr BitwiseXor BitwiseNot BitwiseLeftShift BitwiseRightShift JSONPath JSONPathRoot
        JSONPathKey JSONPathSubscript JSONPathWildcard
    """
)

#: ClickHouse aggregates sqlglot keeps by name: ``uniqExact(x)``, ``sumState(x)``,
#: ``quantileTDigest(0.9)(x)``, ``quantilesIf(0.5)(x, c)``.
_NAMED_AGGREGATES = frozenset(
    (exp.AnonymousAggFunc, exp.CombinedAggFunc, exp.ParameterizedAgg, exp.CombinedParameterizedAgg)
)
_SYNTAX_TYPES = frozenset(SYNTAX_NODES + SYNTAX_FUNCTIONS)
_ALLOWED_SUMMARY = (
    "one SELECT (WITH, JOIN, subqueries and UNION allowed), SHOW TABLES, or DESCRIBE <table>"
)


class SqlRefused(Exception):
    """The query may not run, or ClickHouse refused it; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CheckedQuery:
    """A query the policy allows, and the SQL to run for it.

    ``sql`` is the query's own text for a SELECT (trailing semicolons cut off), and a
    statement written here for ``SHOW TABLES`` and ``DESCRIBE``.
    """

    kind: Literal["select", "show_tables", "describe"]
    sql: str


def _show_tables(database: str) -> str:
    """``SHOW TABLES``, of the tables analysts may read only (:data:`ANALYST_TABLES`)."""

    def literal(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    names = ", ".join(literal(name) for name in sorted(ANALYST_TABLES))
    return (
        f"SELECT name FROM system.tables WHERE database = {literal(database)} "
        f"AND name IN ({names}) ORDER BY name"
    )


def check_query(text: str, database: str) -> CheckedQuery:
    """Decide whether ``text`` may run on the tables of ``database``; :class:`SqlRefused` if not.

    >>> check_query("SHOW TABLES;", "agentwatch").sql  # doctest: +ELLIPSIS
    "SELECT name FROM system.tables WHERE database = 'agentwatch' AND name IN ('agent_events', ..."
    >>> check_query("describe metrics", "agentwatch").sql
    'DESCRIBE TABLE `agentwatch`.`metrics`'
    >>> try:
    ...     check_query("SELECT * FROM system.tables", "agentwatch")
    ... except SqlRefused as refused:
    ...     print(refused.status, refused.message)  # doctest: +ELLIPSIS
    403 table system.tables is not allowed here: only tables of database agentwatch ...
    """
    tokens = _tokens(text)
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    if not tokens:
        raise SqlRefused(400, "the query is empty")
    if any(token.token_type == TokenType.SEMICOLON for token in tokens):
        raise SqlRefused(403, "one statement at a time: the query holds more than one")
    _check_nesting(tokens)
    first = tokens[0].text.upper()
    if first not in ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "("):
        raise SqlRefused(
            403, f"only read queries may run here ({_ALLOWED_SUMMARY}); this one is {first}"
        )
    if [token.text.upper() for token in tokens] == ["SHOW", "TABLES"]:
        return CheckedQuery("show_tables", _show_tables(database))
    tree = _parse(text)
    if isinstance(tree, exp.Describe):
        table = tree.this
        if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
            raise SqlRefused(403, "DESCRIBE takes the name of one table of the project")
        _check_table(table, database)
        _check_readable(table)
        name = f"{quote_identifier(database)}.{quote_identifier(table.name)}"
        return CheckedQuery("describe", f"DESCRIBE TABLE {name}")
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise SqlRefused(
            403, f"only read queries may run here ({_ALLOWED_SUMMARY}); this one is {_kind(tree)}"
        )
    _check_select(tree, database)
    return CheckedQuery("select", text[: tokens[-1].end + 1].strip())


def _tokens(text: str) -> list:
    try:
        return sqlglot.tokenize(text, read=DIALECT)
    except TokenError as exc:
        raise SqlRefused(400, f"cannot read the query: {_first_line(exc)}") from None
    except Exception as exc:  # the tokenizer's own bug on odd input: refuse, never run
        raise SqlRefused(
            400, f"cannot read the query (the tokenizer failed: {type(exc).__name__})"
        ) from None


def _check_nesting(tokens: list) -> None:
    depth = deepest = 0
    for token in tokens:
        if token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
            deepest = max(deepest, depth)
        elif token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1
    if deepest > MAX_NESTING:
        raise SqlRefused(
            400,
            f"the query nests parentheses {deepest} levels deep; at most {MAX_NESTING} are read "
            "here: use WITH to name the parts",
        )


_TOKEN_REPR = re.compile(r"<Token token_type: [^,]*, text: (.*?), line: .*?>")


def _parse(text: str) -> exp.Expression:
    try:
        trees = sqlglot.parse(text, read=DIALECT)
    except ParseError as exc:
        error = exc.errors[0] if exc.errors else {}
        where = f" at line {error['line']}, column {error['col']}" if "line" in error else ""
        what = _TOKEN_REPR.sub(r"'\1'", error.get("description") or _first_line(exc))
        raise SqlRefused(400, f"cannot parse the query{where}: {what}{_hint(text)}") from None
    except RecursionError:
        raise SqlRefused(
            400, "the query nests too deeply to be read here: use WITH to name the parts"
        ) from None
    except Exception as exc:  # the parser's own bug on odd input: refuse, never run
        raise SqlRefused(
            400, f"cannot parse the query (the parser failed: {type(exc).__name__})"
        ) from None
    trees = [tree for tree in trees if tree is not None]
    if len(trees) != 1:
        raise SqlRefused(403, "one statement at a time: the query holds more than one")
    return trees[0]


def _hint(text: str) -> str:
    """What a query the parser could not read probably wanted, and why it is not allowed."""
    words = [token.text.upper() for token in _tokens(text)]
    if any(a == "INTO" and b == "OUTFILE" for a, b in zip(words, words[1:], strict=False)):
        return (
            " (INTO OUTFILE would write a file on the server and is not allowed: ask for "
            "format csv or tsv instead)"
        )
    return ""


def _check_select(tree: exp.Expression, database: str) -> None:
    for node in tree.walk():
        kind = type(node)  # exact types: a subclass sqlglot adds later is not allowed by kin
        if isinstance(node, exp.Query):
            _check_clauses(node)
        if kind is exp.Table:
            _check_table(node, database)
        elif kind is exp.In:
            _check_in(node, database)
        elif kind is exp.Column:
            _check_column(node, database)
        elif kind is exp.TableAlias and node.columns:
            # ClickHouse has no column lists after an alias; sqlglot reads some table
            # functions that way (`dictionary('d')` as table `dictionary` with columns).
            name = node.parent.name if isinstance(node.parent, exp.Table) else node.alias_or_name
            raise SqlRefused(
                403,
                f"{name}(…) is not allowed here: ClickHouse reads a name with a list after it "
                "as a table function; no table functions, and no column lists after an alias",
            )
        elif kind in _SYNTAX_TYPES:
            continue
        elif isinstance(node, exp.Func):
            _check_function(node)
        elif kind in (exp.Placeholder, exp.Parameter):
            raise SqlRefused(403, "query parameters are not supported here: write the values")
        else:
            raise SqlRefused(
                403, f"{_kind(node)} is not allowed here; allowed is {_ALLOWED_SUMMARY}"
            )
    for node in tree.find_all(exp.Table):  # (last: the more telling refusals come first)
        if type(node) is exp.Table:
            _check_readable(node)


def _check_clauses(query: exp.Expression) -> None:
    if query.args.get("format"):
        raise SqlRefused(
            400,
            f"leave out FORMAT {query.args['format'].sql(DIALECT)}: choose json, csv or tsv with "
            "the request's format (agentwatch sql --format)",
        )
    if query.args.get("settings"):
        raise SqlRefused(
            403,
            "a SETTINGS clause is not allowed here: the session's limits (memory, threads, "
            "rows, time) are fixed by the operator (AGENTWATCH_API_SQL_*)",
        )
    for clause in ("into", "options", "locks"):
        if query.args.get(clause):
            raise SqlRefused(403, f"{clause.upper()} is not allowed here: {_ALLOWED_SUMMARY}")


#: The project's tables analysts may read: the cluster profile's grants to a fleet analyst
#: (infra/cluster/clickhouse/initdb/10-analyst.sql; tests/test_sql_sandbox.py holds the two
#: equal), the Grafana dashboards' tables among them. Not the keys (``api_keys``: ids,
#: roles, secret hashes), the migrations, nor the registrations' details (``agent_registry``).
ANALYST_TABLES = frozenset(
    {
        "metrics", "anomalies", "threats", "baselines", "alerts", "security_scores",
        "commands", "incidents", "agent_events", "silences", "rules",
        "deadletter", "loader_offsets", "webhook_offsets", "audit_log",
        "agents", "tasks", "assignment_scores", "assignment_scores_latest",
    }
)  # fmt: skip


def _names_a_cte(table: exp.Table) -> bool:
    """Whether ``table`` (unqualified) is a WITH name of a query around it, as ClickHouse
    resolves it: a table-valued WITH of an enclosing query; within the body of one of that
    query's WITH entries, only the entries before it (a body naming itself or a later entry
    reads the table of that name). A scalar WITH (``WITH (SELECT …) AS x``) names no table.

    >>> from sqlglot import parse_one
    >>> def named(sql):
    ...     return [_names_a_cte(t) for t in parse_one(sql, read="clickhouse").find_all(exp.Table)]
    >>> named("WITH k AS (SELECT 1) SELECT * FROM k")
    [True]
    >>> named("WITH k AS (SELECT * FROM k) SELECT 1"), named("WITH (SELECT 1) AS k SELECT * FROM k")
    ([False], [False])
    >>> named("SELECT * FROM (WITH k AS (SELECT 1) SELECT * FROM k) AS s, k")  # (outer k first)
    [False, True]
    """
    path: list[exp.Expression] = [table]
    while path[-1].parent is not None:
        path.append(path[-1].parent)
    for i in range(1, len(path)):
        query = path[i]
        with_ = query.args.get("with_") or query.args.get("with")  # (sqlglot ≥ 27: with_)
        if not isinstance(query, exp.Query) or with_ is None:
            continue
        entries = with_.expressions
        inside = len(entries)  # (not in a WITH body of this query: every entry)
        if isinstance(path[i - 1], exp.With) and i >= 2:
            inside = next((k for k, cte in enumerate(entries) if cte is path[i - 2]), 0)
        if any(
            cte.alias_or_name == table.name and not cte.args.get("scalar")
            for cte in entries[:inside]
        ):
            return True
    return False


def _check_table(table: exp.Table, database: str) -> None:
    """A table of ``database`` analysts may read (:data:`ANALYST_TABLES`), qualified with it
    or not (the session's default database), or a WITH name of the query."""
    if not isinstance(table.this, exp.Identifier):
        called = table.this
        name = (
            (_function_name(called) or called.sql_name())
            if isinstance(called, exp.Func)
            else called.key.upper()
        )
        raise SqlRefused(
            403,
            f"table function {name}() is not allowed here: no table functions at all; read the "
            f"project's tables of database {database} (SHOW TABLES lists them)",
        )
    db = table.args.get("db")
    if table.args.get("catalog") or (db is not None and db.name != database):
        raise SqlRefused(
            403,
            f"table {_dotted(table)} is not allowed here: only tables of database {database} "
            "(unqualified names resolve there) and the query's own WITH names",
        )


def _check_readable(table: exp.Table) -> None:
    """A table analysts may read (:data:`ANALYST_TABLES`), or a WITH name of the query
    (after :func:`_check_table`, once every other check of the query has passed)."""
    if table.name not in ANALYST_TABLES and (
        table.args.get("db") is not None or not _names_a_cte(table)
    ):
        raise _unreadable(table.name)


def _unreadable(name: str) -> SqlRefused:
    return SqlRefused(
        403,
        f"table {name} is not one analysts may read: {', '.join(sorted(ANALYST_TABLES))} "
        "(and the query's own WITH names)",
    )


def _check_column(column: exp.Column, database: str) -> None:
    """``db.table.column`` may only name the project's database."""
    db = column.args.get("db")
    if column.args.get("catalog") or (db is not None and db.name != database):
        raise SqlRefused(
            403,
            f"column {column.sql(DIALECT)}: a name in three parts reads as database.table.column,"
            f" and only tables of database {database} are allowed here (for an element of a "
            "tuple, write tupleElement(column, 'name'))",
        )


def _check_in(node: exp.In, database: str) -> None:
    """``x IN t`` and ``x IN (t)`` may read table ``t``: hold such a name to the table rules."""
    operands = [node.args["field"]] if node.args.get("field") else node.expressions
    if len(operands) != 1:
        return
    operand = operands[0].unnest() if isinstance(operands[0], exp.Paren) else operands[0]
    if isinstance(operand, exp.Column) and isinstance(operand.this, exp.Identifier):
        if operand.args.get("db") or operand.args.get("catalog"):
            raise SqlRefused(403, f"IN {operand.sql(DIALECT)}: write IN (SELECT …) instead")
        as_table = exp.Table(this=operand.this, db=operand.args.get("table"))
        _check_table(as_table, database)
        node.set("_checked_as_table", None)  # (no-op: keeps the tree as parsed)
        if as_table.name not in ANALYST_TABLES:
            # (IN name reads the table of that name; a WITH name is not one here)
            raise _unreadable(as_table.name)


def _check_function(node: exp.Func) -> None:
    name = _function_name(node)
    if name is None:
        raise SqlRefused(
            403,
            f"function {node.sql_name()} (parsed as {type(node).__name__}) is not allowed here: "
            "it is not on the allowlist (docs/sql.md)",
        )
    if not function_allowed(name):
        raise SqlRefused(
            403,
            f"function {name}() is not allowed here: it is not on the allowlist of scalar, "
            "aggregate and window functions (docs/sql.md); no table functions, dictionaries, "
            "files, URLs or server settings",
        )


def _function_name(node: exp.Func) -> str | None:
    kind = type(node)
    if kind is exp.Anonymous:
        return node.name
    if kind in _NAMED_AGGREGATES:
        return str(node.this)
    return TYPED_FUNCTIONS.get(kind)


def function_allowed(name: str) -> bool:
    """True when ``name`` (any case) is an allowed function, an aggregate with combinators too.

    >>> [function_allowed(name) for name in ("countIf", "groupArrayIfOrNull", "FILE", "dictGet")]
    [True, True, False, False]
    """
    lower = name.lower()
    if lower in SCALAR_FUNCTIONS or lower in WINDOW_FUNCTIONS:
        return True
    return _aggregate(lower)


def _aggregate(lower: str) -> bool:
    if lower in AGGREGATE_FUNCTIONS:
        return True
    return any(
        lower.endswith(suffix) and len(lower) > len(suffix) and _aggregate(lower[: -len(suffix)])
        for suffix in AGGREGATE_COMBINATORS
    )


def _kind(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _dotted(table: exp.Table) -> str:
    return ".".join(part.name for part in table.parts)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
