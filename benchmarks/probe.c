/*
 * probe: one-at-a-time calls to a served model over one kept-alive connection,
 * timed in blocks, for the 1-client turns of the benchmarks
 * (benchmarks/interleaved.py).
 *
 *   probe http HOST PORT REQUEST_FILE
 *   probe grpc HOST PORT HEADER_BLOCK_FILE MESSAGE_FILE EXPECTED_BYTES
 *
 * benchmarks/probes.py builds every byte sent (the HTTP/1.1 request; the HPACK
 * header block and the length-prefixed gRPC message) and compiles this file. The
 * probe only sends those bytes and reads the answers, so its own cost per call
 * is a few system calls: it runs on the load-generator core, and whatever it
 * spends counts against the server measured.
 *
 * It connects, prints {"ready":true}, then answers each line of standard input
 * (a number of seconds) with one JSON line: {"latencies_ns":[...]} for a block
 * of calls of that length, or {"error":"..."} if a call of the block failed.
 * A failed call whose answer was read whole (an HTTP error status, a gRPC
 * call without the expected message) leaves the connection usable; anything
 * else (a closed connection, a malformed answer, GOAWAY) ends the program with
 * status 1 after the error line. End of input ends it with status 0.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ---- errors ------------------------------------------------------------ */

/* What a call left behind. */
enum outcome {
    CALL_OK,
    CALL_FAILED,     /* the answer was read whole: the connection is usable */
    CONNECTION_LOST, /* the connection is gone or out of step */
};

/* Why the last call failed, for the block's error line. */
static char error_text[512];

static void set_error(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error_text, sizeof error_text, format, args);
    va_end(args);
}

/* ---- bytes and files --------------------------------------------------- */

struct bytes {
    unsigned char *data;
    size_t size;
};

/* Read a whole file; false with error_text set if it cannot be read. */
static bool read_file(const char *path, struct bytes *into)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        set_error("cannot open %s: %s", path, strerror(errno));
        return false;
    }
    size_t capacity = 4096;
    into->data = malloc(capacity);
    into->size = 0;
    bool ok = into->data != NULL;
    while (ok) {
        if (into->size == capacity) {
            unsigned char *grown = realloc(into->data, capacity * 2);
            if (grown == NULL) {
                ok = false;
                break;
            }
            into->data = grown;
            capacity *= 2;
        }
        size_t got = fread(into->data + into->size, 1, capacity - into->size, file);
        into->size += got;
        if (got == 0) {
            ok = !ferror(file);
            break;
        }
    }
    fclose(file);
    if (!ok) {
        set_error("cannot read %s", path);
    }
    return ok;
}

static void put_u32(unsigned char *at, uint32_t value)
{
    at[0] = (unsigned char)(value >> 24);
    at[1] = (unsigned char)(value >> 16);
    at[2] = (unsigned char)(value >> 8);
    at[3] = (unsigned char)value;
}

static uint32_t get_u32(const unsigned char *at)
{
    return (uint32_t)at[0] << 24 | (uint32_t)at[1] << 16 | (uint32_t)at[2] << 8 |
           (uint32_t)at[3];
}

/* ---- the connection ---------------------------------------------------- */

/* Connect to HOST:PORT with Nagle off (a request goes out as soon as it is
 * written); the socket, or -1 with error_text set. */
static int connect_to(const char *host, const char *port)
{
    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    struct addrinfo *addresses = NULL;
    int status = getaddrinfo(host, port, &hints, &addresses);
    if (status != 0) {
        set_error("cannot resolve %s:%s: %s", host, port, gai_strerror(status));
        return -1;
    }
    int fd = -1;
    set_error("cannot connect to %s:%s: no address", host, port);
    for (struct addrinfo *address = addresses; address != NULL;
         address = address->ai_next) {
        fd = socket(address->ai_family, address->ai_socktype, address->ai_protocol);
        if (fd < 0) {
            set_error("cannot open a socket: %s", strerror(errno));
            continue;
        }
        if (connect(fd, address->ai_addr, address->ai_addrlen) == 0) {
            break;
        }
        set_error("cannot connect to %s:%s: %s", host, port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(addresses);
    if (fd >= 0) {
        int on = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) != 0) {
            set_error("cannot set TCP_NODELAY: %s", strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    return fd;
}

/* Send everything; false with error_text set when the connection is gone.
 * MSG_NOSIGNAL: a closed connection is an error to report, not a SIGPIPE. */
static bool send_all(int fd, const unsigned char *data, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) {
                continue;
            }
            set_error("send failed: %s", strerror(errno));
            return false;
        }
        data += sent;
        size -= (size_t)sent;
    }
    return true;
}

/* Bytes received on the connection and not yet taken. One recv usually brings
 * a whole answer, so reading it costs one system call. */
struct reader {
    int fd;
    size_t start; /* the first byte not yet taken */
    size_t end;   /* one past the last byte received */
    unsigned char data[65536];
};

/* Receive more; false with error_text set when the connection is gone. */
static bool reader_fill(struct reader *reader)
{
    if (reader->start == reader->end) {
        reader->start = reader->end = 0;
    } else if (reader->end == sizeof reader->data) {
        /* Full: move the bytes not yet taken to the front to make room. */
        memmove(reader->data, reader->data + reader->start,
                reader->end - reader->start);
        reader->end -= reader->start;
        reader->start = 0;
    }
    ssize_t got;
    do {
        got = recv(reader->fd, reader->data + reader->end,
                   sizeof reader->data - reader->end, 0);
    } while (got < 0 && errno == EINTR);
    if (got == 0) {
        set_error("the server closed the connection");
        return false;
    }
    if (got < 0) {
        set_error("receive failed: %s", strerror(errno));
        return false;
    }
    reader->end += (size_t)got;
    return true;
}

/* Take exactly SIZE bytes into INTO, or drop them if INTO is NULL. */
static bool reader_take(struct reader *reader, void *into, size_t size)
{
    unsigned char *out = into;
    while (size > 0) {
        if (reader->start == reader->end && !reader_fill(reader)) {
            return false;
        }
        size_t chunk = reader->end - reader->start;
        if (chunk > size) {
            chunk = size;
        }
        if (out != NULL) {
            memcpy(out, reader->data + reader->start, chunk);
            out += chunk;
        }
        reader->start += chunk;
        size -= chunk;
    }
    return true;
}

/* The next line, without its CR LF, NUL-terminated in the reader's buffer (so
 * valid only until the reader is used again); NULL with error_text set when the
 * connection is gone or the line does not fit in the buffer. */
static char *reader_line(struct reader *reader)
{
    size_t scanned = 0; /* bytes after start already known to hold no LF */
    for (;;) {
        unsigned char *line = reader->data + reader->start;
        size_t available = reader->end - reader->start;
        unsigned char *lf = memchr(line + scanned, '\n', available - scanned);
        if (lf != NULL) {
            size_t length = (size_t)(lf - line);
            reader->start += length + 1;
            if (length > 0 && line[length - 1] == '\r') {
                length--;
            }
            line[length] = '\0';
            return (char *)line;
        }
        scanned = available;
        if (available == sizeof reader->data) {
            set_error("a line longer than %zu bytes in the answer",
                      sizeof reader->data);
            return NULL;
        }
        if (!reader_fill(reader)) {
            return NULL;
        }
    }
}

/* ---- HTTP/1.1 ---------------------------------------------------------- */

/* Skip a chunked body (RFC 9112 §7.1): chunks, the last (empty) chunk, then any
 * trailer fields up to the empty line that ends the answer. */
static bool skip_chunked_body(struct reader *reader)
{
    for (;;) {
        char *line = reader_line(reader);
        if (line == NULL) {
            return false;
        }
        char *end;
        errno = 0;
        unsigned long long size = strtoull(line, &end, 16);
        /* Hex digits, then the end, an extension (;) or whitespace before it. */
        if (!isxdigit((unsigned char)line[0]) || errno != 0 ||
            (*end != '\0' && *end != ';' && *end != ' ' && *end != '\t')) {
            set_error("malformed chunk size line \"%.80s\"", line);
            return false;
        }
        if (size == 0) {
            break;
        }
        if (!reader_take(reader, NULL, (size_t)size)) {
            return false;
        }
        line = reader_line(reader);
        if (line == NULL) {
            return false;
        }
        if (*line != '\0') {
            set_error("a chunk not followed by CR LF");
            return false;
        }
    }
    for (;;) {
        char *line = reader_line(reader);
        if (line == NULL) {
            return false;
        }
        if (*line == '\0') {
            return true;
        }
    }
}

/* Whether a Transfer-Encoding value names chunked (it is the last coding when
 * present; case does not matter). Lowercases VALUE in place. */
static bool names_chunked(char *value)
{
    for (char *c = value; *c != '\0'; c++) {
        *c = (char)tolower((unsigned char)*c);
    }
    return strstr(value, "chunked") != NULL;
}

/* Send the request and read the whole answer; OK on status 200. */
static enum outcome http_call(struct reader *reader, const struct bytes *request)
{
    if (!send_all(reader->fd, request->data, request->size)) {
        return CONNECTION_LOST;
    }
    char *line = reader_line(reader);
    if (line == NULL) {
        return CONNECTION_LOST;
    }
    int status;
    if (sscanf(line, "HTTP/%*d.%*d %3d", &status) != 1) {
        set_error("malformed status line \"%.80s\"", line);
        return CONNECTION_LOST;
    }
    long long length = -1;
    bool chunked = false;
    while ((line = reader_line(reader)) != NULL && *line != '\0') {
        char *colon = strchr(line, ':');
        if (colon == NULL) {
            set_error("malformed header line \"%.80s\"", line);
            return CONNECTION_LOST;
        }
        *colon = '\0';
        char *value = colon + 1 + strspn(colon + 1, " \t");
        if (strcasecmp(line, "content-length") == 0) {
            char *end;
            errno = 0;
            length = strtoll(value, &end, 10);
            if (!isdigit((unsigned char)*value) || errno != 0 ||
                (*end != '\0' && !isspace((unsigned char)*end))) {
                set_error("malformed Content-Length \"%.40s\"", value);
                return CONNECTION_LOST;
            }
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            chunked = names_chunked(value);
        }
    }
    if (line == NULL) {
        return CONNECTION_LOST;
    }
    /* The probe never sends Expect: 100-continue, so no interim 1xx answer comes
     * before the real one; 204 and 304 answers have no body. */
    bool read;
    if (chunked) {
        read = skip_chunked_body(reader);
    } else if (length >= 0) {
        read = reader_take(reader, NULL, (size_t)length);
    } else if (status == 204 || status == 304) {
        read = true;
    } else {
        /* Such a body runs to the end of the connection: nothing more to call. */
        set_error("HTTP status %d with neither Content-Length nor a chunked body",
                  status);
        return CONNECTION_LOST;
    }
    if (!read) {
        return CONNECTION_LOST;
    }
    if (status != 200) {
        set_error("HTTP status %d", status);
        return CALL_FAILED;
    }
    return CALL_OK;
}

/* ---- unary gRPC over HTTP/2 (RFC 9113), prior knowledge ---------------- */

enum {
    FRAME_DATA = 0x0,
    FRAME_HEADERS = 0x1,
    FRAME_RST_STREAM = 0x3,
    FRAME_SETTINGS = 0x4,
    FRAME_PING = 0x6,
    FRAME_GOAWAY = 0x7,
    FRAME_WINDOW_UPDATE = 0x8,
};
enum {
    FLAG_END_STREAM = 0x1,
    FLAG_ACK = 0x1,
    FLAG_END_HEADERS = 0x4,
    FLAG_PADDED = 0x8,
};
enum {
    FRAME_HEADER_SIZE = 9,
    /* SETTINGS_MAX_FRAME_SIZE's initial value, which the probe never raises:
     * no frame either way is larger. */
    MAX_FRAME = 16384,
    /* The peer's initial flow-control windows: the probe ignores WINDOW_UPDATE,
     * so one message must fit in them. */
    DEFAULT_WINDOW = 65535,
    SETTINGS_ENABLE_PUSH = 0x2,
    SETTINGS_INITIAL_WINDOW_SIZE = 0x4,
};
#define MAX_WINDOW 0x7fffffffu

static void put_frame_header(unsigned char *at, size_t length, int type, int flags,
                             uint32_t stream)
{
    at[0] = (unsigned char)(length >> 16);
    at[1] = (unsigned char)(length >> 8);
    at[2] = (unsigned char)length;
    at[3] = (unsigned char)type;
    at[4] = (unsigned char)flags;
    put_u32(at + 5, stream);
}

/* The connection's start: the preface, SETTINGS that turn push off and open
 * every stream's receive window to the maximum, and a WINDOW_UPDATE doing the
 * same for the connection's; the probe never has to send WINDOW_UPDATE again. */
static bool grpc_start(int fd)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    unsigned char start[sizeof preface - 1 + FRAME_HEADER_SIZE + 12 +
                        FRAME_HEADER_SIZE + 4];
    unsigned char *at = start;
    memcpy(at, preface, sizeof preface - 1);
    at += sizeof preface - 1;
    put_frame_header(at, 12, FRAME_SETTINGS, 0, 0);
    at += FRAME_HEADER_SIZE;
    at[0] = 0;
    at[1] = SETTINGS_ENABLE_PUSH;
    put_u32(at + 2, 0);
    at[6] = 0;
    at[7] = SETTINGS_INITIAL_WINDOW_SIZE;
    put_u32(at + 8, MAX_WINDOW);
    at += 12;
    put_frame_header(at, 4, FRAME_WINDOW_UPDATE, 0, 0);
    put_u32(at + FRAME_HEADER_SIZE, MAX_WINDOW - DEFAULT_WINDOW);
    return send_all(fd, start, sizeof start);
}

/* One call's frames, built once: a HEADERS frame with the whole header block,
 * then the message in DATA frames, END_STREAM on the last. Each call only
 * rewrites the stream id (grpc_set_stream). */
static bool grpc_request(const struct bytes *block, const struct bytes *message,
                         struct bytes *into)
{
    if (block->size > MAX_FRAME) {
        set_error("a header block of %zu bytes needs CONTINUATION frames, which the "
                  "probe does not send",
                  block->size);
        return false;
    }
    if (message->size > DEFAULT_WINDOW) {
        set_error("a message of %zu bytes is over the server's initial %d-byte window",
                  message->size, DEFAULT_WINDOW);
        return false;
    }
    /* At least one DATA frame: it carries END_STREAM. */
    size_t data_frames =
        message->size == 0 ? 1 : (message->size + MAX_FRAME - 1) / MAX_FRAME;
    into->size = FRAME_HEADER_SIZE + block->size + data_frames * FRAME_HEADER_SIZE +
                 message->size;
    into->data = malloc(into->size);
    if (into->data == NULL) {
        set_error("out of memory");
        return false;
    }
    unsigned char *at = into->data;
    put_frame_header(at, block->size, FRAME_HEADERS, FLAG_END_HEADERS, 1);
    memcpy(at + FRAME_HEADER_SIZE, block->data, block->size);
    at += FRAME_HEADER_SIZE + block->size;
    size_t offset = 0;
    for (size_t frame = 0; frame < data_frames; frame++) {
        size_t chunk = message->size - offset;
        if (chunk > MAX_FRAME) {
            chunk = MAX_FRAME;
        }
        bool last = frame + 1 == data_frames;
        put_frame_header(at, chunk, FRAME_DATA, last ? FLAG_END_STREAM : 0, 1);
        memcpy(at + FRAME_HEADER_SIZE, message->data + offset, chunk);
        at += FRAME_HEADER_SIZE + chunk;
        offset += chunk;
    }
    return true;
}

/* Put STREAM in every frame of a request built by grpc_request. */
static void grpc_set_stream(struct bytes *request, uint32_t stream)
{
    size_t at = 0;
    while (at < request->size) {
        unsigned char *frame = request->data + at;
        size_t length = (size_t)frame[0] << 16 | (size_t)frame[1] << 8 | frame[2];
        put_u32(frame + 5, stream);
        at += FRAME_HEADER_SIZE + length;
    }
}

struct grpc_state {
    struct bytes request;
    uint32_t next_stream;      /* client streams are odd: 1, 3, 5, ... */
    long long expected;        /* a good answer's message size; -1: any */
    unsigned char payload[MAX_FRAME];
};

/* Reply to what the connection asks of us between calls: SETTINGS want an
 * acknowledgement, a PING its payload echoed. */
static bool grpc_answer_control(int fd, int type, const unsigned char *payload,
                                size_t length)
{
    unsigned char reply[FRAME_HEADER_SIZE + 8];
    if (type == FRAME_SETTINGS) {
        put_frame_header(reply, 0, FRAME_SETTINGS, FLAG_ACK, 0);
        return send_all(fd, reply, FRAME_HEADER_SIZE);
    }
    if (length != 8) {
        set_error("a PING frame of %zu bytes", length);
        return false;
    }
    put_frame_header(reply, 8, FRAME_PING, FLAG_ACK, 0);
    memcpy(reply + FRAME_HEADER_SIZE, payload, 8);
    return send_all(fd, reply, sizeof reply);
}

/* One call on a new stream. The answer's headers are not decoded: as with
 * h2load, a call succeeded when its stream carried a message of the expected
 * size, since a failed gRPC call carries none. */
static enum outcome grpc_call(struct reader *reader, struct grpc_state *grpc)
{
    if (grpc->next_stream > MAX_WINDOW) {
        set_error("the connection's stream ids are used up");
        return CONNECTION_LOST;
    }
    uint32_t stream = grpc->next_stream;
    grpc->next_stream += 2;
    grpc_set_stream(&grpc->request, stream);
    if (!send_all(reader->fd, grpc->request.data, grpc->request.size)) {
        return CONNECTION_LOST;
    }
    size_t received = 0; /* DATA payload on our stream, padding left out */
    for (;;) {
        unsigned char header[FRAME_HEADER_SIZE];
        if (!reader_take(reader, header, sizeof header)) {
            return CONNECTION_LOST;
        }
        size_t length = (size_t)header[0] << 16 | (size_t)header[1] << 8 | header[2];
        int type = header[3];
        int flags = header[4];
        uint32_t on = get_u32(header + 5) & MAX_WINDOW; /* the top bit is reserved */
        if (length > MAX_FRAME) {
            set_error("a frame of %zu bytes, over the %d allowed", length, MAX_FRAME);
            return CONNECTION_LOST;
        }
        if (!reader_take(reader, grpc->payload, length)) {
            return CONNECTION_LOST;
        }
        if ((type == FRAME_SETTINGS || type == FRAME_PING) && !(flags & FLAG_ACK)) {
            if (!grpc_answer_control(reader->fd, type, grpc->payload, length)) {
                return CONNECTION_LOST;
            }
        } else if (type == FRAME_GOAWAY) {
            set_error("the server sent GOAWAY");
            return CONNECTION_LOST;
        } else if (on != stream) {
            continue; /* acknowledgements, window updates, ends of old streams */
        } else if (type == FRAME_RST_STREAM) {
            set_error("the server reset the stream");
            return CALL_FAILED;
        } else if (type == FRAME_DATA) {
            size_t padding = 0;
            if (flags & FLAG_PADDED) {
                padding = length == 0 ? 1 : 1 + (size_t)grpc->payload[0];
                if (padding > length) {
                    set_error("a DATA frame with more padding than payload");
                    return CONNECTION_LOST;
                }
            }
            received += length - padding;
            if (flags & FLAG_END_STREAM) {
                break;
            }
        } else if (type == FRAME_HEADERS && (flags & FLAG_END_STREAM)) {
            break;
        }
    }
    bool good = received >= 5 &&
                (grpc->expected < 0 || received == 5 + (size_t)grpc->expected);
    if (!good) {
        char wanted[32] = "some";
        if (grpc->expected >= 0) {
            snprintf(wanted, sizeof wanted, "%lld", 5 + grpc->expected);
        }
        set_error("gRPC call answered %zu message bytes; a good answer has %s",
                  received, wanted);
        return CALL_FAILED;
    }
    return CALL_OK;
}

/* ---- blocks ------------------------------------------------------------ */

struct probe {
    bool grpc;
    struct bytes http_request;
    struct grpc_state grpc_state;
    struct reader reader;
};

static enum outcome call(struct probe *probe)
{
    return probe->grpc ? grpc_call(&probe->reader, &probe->grpc_state)
                       : http_call(&probe->reader, &probe->http_request);
}

static int64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

struct latencies {
    int64_t *values;
    size_t count;
    size_t capacity;
};

static bool append(struct latencies *latencies, int64_t value)
{
    if (latencies->count == latencies->capacity) {
        size_t capacity = latencies->capacity ? latencies->capacity * 2 : 1024;
        int64_t *grown = realloc(latencies->values, capacity * sizeof *grown);
        if (grown == NULL) {
            return false;
        }
        latencies->values = grown;
        latencies->capacity = capacity;
    }
    latencies->values[latencies->count++] = value;
    return true;
}

/* One block: a call that is not counted (the core ran another process just
 * before), then one call at a time until SECONDS have passed, each timed from
 * just before its request is sent to the end of its answer. */
static enum outcome run_block(struct probe *probe, double seconds,
                              struct latencies *latencies)
{
    latencies->count = 0;
    enum outcome outcome = call(probe);
    if (outcome != CALL_OK) {
        return outcome;
    }
    int64_t stop = now_ns() + (int64_t)(seconds * 1e9);
    for (;;) {
        int64_t started = now_ns();
        if (started >= stop) {
            return CALL_OK;
        }
        outcome = call(probe);
        int64_t ended = now_ns();
        if (outcome != CALL_OK) {
            return outcome;
        }
        if (!append(latencies, ended - started)) {
            set_error("out of memory");
            return CONNECTION_LOST;
        }
    }
}

/* {"error":"MESSAGE"}, escaped so whatever bytes of the answer it quotes keep the
 * line valid JSON (bytes outside ASCII are read as Latin-1). */
static void print_error(const char *message)
{
    fputs("{\"error\":\"", stdout);
    for (const unsigned char *c = (const unsigned char *)message; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\') {
            printf("\\%c", *c);
        } else if (*c < 0x20 || *c >= 0x7f) {
            printf("\\u%04x", *c);
        } else {
            putchar(*c);
        }
    }
    fputs("\"}\n", stdout);
    fflush(stdout);
}

static void print_latencies(const struct latencies *latencies)
{
    fputs("{\"latencies_ns\":[", stdout);
    for (size_t i = 0; i < latencies->count; i++) {
        printf(i ? ",%lld" : "%lld", (long long)latencies->values[i]);
    }
    fputs("]}\n", stdout);
    fflush(stdout);
}

/* A line of standard input as a number of seconds; false if it is not one. */
static bool parse_seconds(const char *line, double *seconds)
{
    char *end;
    *seconds = strtod(line, &end);
    while (isspace((unsigned char)*end)) {
        end++;
    }
    /* The comparisons are false for NaN too. */
    return end != line && *end == '\0' && *seconds >= 0 && *seconds <= 86400;
}

/* ---- main -------------------------------------------------------------- */

static int usage(void)
{
    fputs("usage: probe http HOST PORT REQUEST_FILE\n"
          "       probe grpc HOST PORT HEADER_BLOCK_FILE MESSAGE_FILE EXPECTED_BYTES\n",
          stderr);
    return 2;
}

static int start_failed(void)
{
    fprintf(stderr, "probe: %s\n", error_text);
    return 1;
}

/* Static: the reader's buffer and the frame payload are too big for the stack. */
static struct probe probe;

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "http") == 0) {
        probe.grpc = false;
        if (!read_file(argv[4], &probe.http_request)) {
            return start_failed();
        }
    } else if (argc == 7 && strcmp(argv[1], "grpc") == 0) {
        probe.grpc = true;
        struct bytes block;
        struct bytes message;
        char *end;
        errno = 0;
        probe.grpc_state.expected = strtoll(argv[6], &end, 10);
        if (*argv[6] == '\0' || *end != '\0' || errno != 0 ||
            probe.grpc_state.expected < -1) {
            fprintf(stderr, "probe: EXPECTED_BYTES must be a size or -1, not %s\n",
                    argv[6]);
            return usage();
        }
        if (!read_file(argv[4], &block) || !read_file(argv[5], &message) ||
            !grpc_request(&block, &message, &probe.grpc_state.request)) {
            return start_failed();
        }
        free(block.data);
        free(message.data);
        probe.grpc_state.next_stream = 1;
    } else {
        return usage();
    }

    probe.reader.fd = connect_to(argv[2], argv[3]);
    if (probe.reader.fd < 0) {
        return start_failed();
    }
    if (probe.grpc && !grpc_start(probe.reader.fd)) {
        return start_failed();
    }
    fputs("{\"ready\":true}\n", stdout);
    fflush(stdout);

    struct latencies latencies = {0};
    char *line = NULL;
    size_t line_capacity = 0;
    while (getline(&line, &line_capacity, stdin) != -1) {
        double seconds;
        if (!parse_seconds(line, &seconds)) {
            print_error("a block length must be a number of seconds");
            continue;
        }
        enum outcome outcome = run_block(&probe, seconds, &latencies);
        if (outcome == CALL_OK) {
            print_latencies(&latencies);
        } else {
            print_error(error_text);
        }
        if (outcome == CONNECTION_LOST) {
            return 1;
        }
    }
    return 0;
}
