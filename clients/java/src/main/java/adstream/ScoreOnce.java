package adstream;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.msgpack.core.MessageBufferPacker;
import org.msgpack.core.MessagePack;
import org.msgpack.core.MessageUnpacker;
import org.msgpack.value.Value;

/**
 * Score one request through adstream, written from the published contract alone: a
 * ScoreRequest is a MessagePack map whose candidate columns are [dtype, shape, bin]
 * little-endian arrays; headers are ASCII text; the answer is a ScoreResult on the topic the
 * request names in reply_to (this program creates one for itself and deletes it after).
 * Prints the result as one JSON line; exit 1 when none arrives in time, 2 on bad arguments.
 */
public final class ScoreOnce {
    private static final String SCHEMA = "ads.ScoreRequest/1.1";

    public static void main(String[] argv) throws Exception {
        Args a;
        try {
            a = Args.parse(argv);
        } catch (IllegalArgumentException e) {
            System.err.println("ScoreOnce: " + e.getMessage());
            System.exit(2);
            return;
        }
        String replyTopic = a.replyTopic != null ? a.replyTopic
                : "adstream.reply.java." + ProcessHandle.current().pid() + "." + System.nanoTime();
        Properties common = new Properties();
        common.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, a.bootstrap);
        try (Admin admin = Admin.create(common)) {
            if (a.replyTopic == null) {
                admin.createTopics(List.of(new NewTopic(replyTopic, 1, (short) 1))).all().get();
            }
            try {
                System.out.println(score(a, replyTopic));
            } finally {
                if (a.replyTopic == null) {
                    admin.deleteTopics(List.of(replyTopic)).all().get();
                }
            }
        }
    }

    static String score(Args a, String replyTopic) throws Exception {
        long now = System.currentTimeMillis();
        long deadline = now + a.timeoutMs;
        byte[] value = encodeRequest(a, replyTopic, deadline);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, a.bootstrap);
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, a.bootstrap);
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaProducer<byte[], byte[]> producer =
                     new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer());
             KafkaConsumer<byte[], byte[]> consumer =
                     new KafkaConsumer<>(cp, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            TopicPartition tp = new TopicPartition(replyTopic, 0);
            consumer.assign(List.of(tp));
            consumer.seekToBeginning(List.of(tp));
            consumer.position(tp);  // resolve the start before the request can be answered
            // key = user id: Java's default partitioner (murmur2) is the one aiokafka uses
            ProducerRecord<byte[], byte[]> rec = new ProducerRecord<>(a.requestsTopic,
                    a.userId.getBytes(StandardCharsets.UTF_8), value);
            rec.headers().add("schema", ascii(SCHEMA));
            rec.headers().add("deadline_ms", ascii(Long.toString(deadline)));
            rec.headers().add("trace_id", ascii(a.requestId));
            rec.headers().add("sent_ms", ascii(Long.toString(now)));
            producer.send(rec).get();
            long giveUp = deadline + 1000;  // the pipeline answers by the deadline at the latest
            while (System.currentTimeMillis() < giveUp) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    String json = resultJson(r.value(), a.requestId);
                    if (json != null) {
                        return json;
                    }
                }
            }
        }
        System.err.println("ScoreOnce: no answer to " + a.requestId + " within " + a.timeoutMs + " ms");
        System.exit(1);
        return null;
    }

    static byte[] ascii(String s) {
        return s.getBytes(StandardCharsets.US_ASCII);
    }

    // ---- encoding: ScoreRequest ---------------------------------------------------------------

    static byte[] encodeRequest(Args a, String replyTo, long deadlineMs) throws Exception {
        MessageBufferPacker p = MessagePack.newDefaultBufferPacker();
        p.packMapHeader(10);
        p.packString("schema").packString(SCHEMA);
        p.packString("request_id").packString(a.requestId);
        p.packString("user_id").packString(a.userId);
        p.packString("user");
        packScalars(p, a.user);
        p.packString("context");
        packScalars(p, a.context);
        p.packString("candidates");
        p.packMapHeader(2 + a.intColumns.size() + a.floatColumns.size());
        p.packString("ad_id");
        packInt64Column(p, a.adIds);
        p.packString("bid");
        packFloat32Column(p, a.bids);
        for (Map.Entry<String, long[]> c : a.intColumns.entrySet()) {
            p.packString(c.getKey());
            packInt64Column(p, c.getValue());
        }
        for (Map.Entry<String, float[]> c : a.floatColumns.entrySet()) {
            p.packString(c.getKey());
            packFloat32Column(p, c.getValue());
        }
        p.packString("top_k").packInt(a.topK);
        p.packString("reply_to").packString(replyTo);
        p.packString("deadline_ms").packLong(deadlineMs);
        p.packString("priority").packInt(0);
        p.close();
        return p.toByteArray();
    }

    static void packScalars(MessageBufferPacker p, Map<String, Number> m) throws Exception {
        p.packMapHeader(m.size());
        for (Map.Entry<String, Number> e : m.entrySet()) {
            p.packString(e.getKey());
            if (e.getValue() instanceof Long v) {
                p.packLong(v);
            } else {
                p.packDouble(e.getValue().doubleValue());
            }
        }
    }

    /** A column: [dtype, [rows], bin of little-endian values]. */
    static void packColumn(MessageBufferPacker p, String dtype, int rows, byte[] data) throws Exception {
        p.packArrayHeader(3);
        p.packString(dtype);
        p.packArrayHeader(1).packInt(rows);
        p.packBinaryHeader(data.length);
        p.writePayload(data);
    }

    static void packInt64Column(MessageBufferPacker p, long[] v) throws Exception {
        ByteBuffer b = ByteBuffer.allocate(v.length * 8).order(ByteOrder.LITTLE_ENDIAN);
        for (long x : v) {
            b.putLong(x);
        }
        packColumn(p, "<i8", v.length, b.array());
    }

    static void packFloat32Column(MessageBufferPacker p, float[] v) throws Exception {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putFloat(x);
        }
        packColumn(p, "<f4", v.length, b.array());
    }

    // ---- decoding: ScoreResult ----------------------------------------------------------------

    /** The result as JSON when it answers {@code requestId}; null for another request's. */
    static String resultJson(byte[] data, String requestId) throws Exception {
        Map<String, Value> m = new LinkedHashMap<>();
        try (MessageUnpacker u = MessagePack.newDefaultUnpacker(data)) {
            for (Map.Entry<Value, Value> e : u.unpackValue().asMapValue().entrySet()) {
                m.put(e.getKey().asStringValue().asString(), e.getValue());
            }
        }
        if (!requestId.equals(m.get("request_id").asStringValue().asString())) {
            return null;
        }
        ByteBuffer adIds = columnBytes(m.get("ad_id"), "<i8");
        ByteBuffer bids = columnBytes(m.get("bid"), "<f4");
        ByteBuffer scores = columnBytes(m.get("score"), "<f4");
        StringBuilder s = new StringBuilder();
        s.append("{\"request_id\": ").append(quote(requestId));
        s.append(", \"status\": ").append(quote(m.get("status").asStringValue().asString()));
        s.append(", \"ads\": [");
        int n = adIds.remaining() / 8;
        for (int i = 0; i < n; i++) {
            if (i > 0) {
                s.append(", ");
            }
            s.append(String.format(Locale.ROOT, "{\"ad_id\": %d, \"score\": %s, \"bid\": %s}",
                    adIds.getLong(), Float.toString(scores.getFloat()), Float.toString(bids.getFloat())));
        }
        s.append("]");
        Value reason = m.get("reason");
        if (reason != null && reason.isStringValue()) {
            s.append(", \"reason\": ").append(quote(reason.asStringValue().asString()));
        }
        return s.append("}").toString();
    }

    static ByteBuffer columnBytes(Value column, String dtype) {
        List<Value> c = column.asArrayValue().list();
        String got = c.get(0).asStringValue().asString();
        if (!got.equals(dtype)) {
            throw new IllegalStateException("result column has dtype " + got + ", expected " + dtype);
        }
        return ByteBuffer.wrap(c.get(2).asBinaryValue().asByteArray()).order(ByteOrder.LITTLE_ENDIAN);
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                default -> {
                    if (ch < 0x20) {
                        b.append(String.format("\\u%04x", (int) ch));
                    } else {
                        b.append(ch);
                    }
                }
            }
        }
        return b.append('"').toString();
    }

    // ---- arguments ----------------------------------------------------------------------------

    static final class Args {
        String bootstrap = "127.0.0.1:9092";
        String requestsTopic = "ads.requests";
        String replyTopic;
        String requestId;
        String userId;
        int topK = 10;
        long timeoutMs = 5000;
        long[] adIds;
        float[] bids;
        final Map<String, long[]> intColumns = new LinkedHashMap<>();
        final Map<String, float[]> floatColumns = new LinkedHashMap<>();
        final Map<String, Number> user = new LinkedHashMap<>();
        final Map<String, Number> context = new LinkedHashMap<>();

        static final Set<String> FLAGS = Set.of("--bootstrap", "--requests-topic", "--reply-topic",
                "--request-id", "--user-id", "--top-k", "--timeout-ms", "--ad-id", "--bid",
                "--int-column", "--float-column", "--user", "--context");

        static Args parse(String[] argv) {
            Args a = new Args();
            for (int i = 0; i < argv.length; i += 2) {
                String flag = argv[i];
                if (!FLAGS.contains(flag) || i + 1 >= argv.length) {
                    throw new IllegalArgumentException("usage: ScoreOnce --request-id ID --user-id ID "
                            + "--ad-id 1,2,3 --bid 0.5,1.0,2.0 [--int-column NAME=1,2,3] "
                            + "[--float-column NAME=0.1,0.2,0.3] [--user NAME=VALUE] [--context NAME=VALUE] "
                            + "[--top-k K] [--timeout-ms MS] [--bootstrap HOST:PORT] "
                            + "[--requests-topic T] [--reply-topic T]; bad or incomplete " + flag);
                }
                String v = argv[i + 1];
                switch (flag) {
                    case "--bootstrap" -> a.bootstrap = v;
                    case "--requests-topic" -> a.requestsTopic = v;
                    case "--reply-topic" -> a.replyTopic = v;
                    case "--request-id" -> a.requestId = v;
                    case "--user-id" -> a.userId = v;
                    case "--top-k" -> a.topK = Integer.parseInt(v);
                    case "--timeout-ms" -> a.timeoutMs = Long.parseLong(v);
                    case "--ad-id" -> a.adIds = longs(v);
                    case "--bid" -> a.bids = floats(v);
                    case "--int-column" -> a.intColumns.put(name(v), longs(after(v)));
                    case "--float-column" -> a.floatColumns.put(name(v), floats(after(v)));
                    case "--user" -> a.user.put(name(v), number(after(v)));
                    case "--context" -> a.context.put(name(v), number(after(v)));
                    default -> throw new IllegalArgumentException(flag);
                }
            }
            if (a.requestId == null || a.userId == null || a.adIds == null || a.bids == null) {
                throw new IllegalArgumentException("--request-id, --user-id, --ad-id and --bid are required");
            }
            if (a.adIds.length == 0 || a.adIds.length != a.bids.length) {
                throw new IllegalArgumentException("--ad-id and --bid need the same, non-zero number of values");
            }
            return a;
        }

        static String name(String kv) {
            int eq = kv.indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected NAME=VALUE, got " + kv);
            }
            return kv.substring(0, eq);
        }

        static String after(String kv) {
            return kv.substring(kv.indexOf('=') + 1);
        }

        static Number number(String s) {
            return s.contains(".") ? (Number) Double.parseDouble(s) : (Number) Long.parseLong(s);
        }

        static long[] longs(String csv) {
            List<Long> out = new ArrayList<>();
            for (String x : csv.split(",")) {
                out.add(Long.parseLong(x.trim()));
            }
            return out.stream().mapToLong(Long::longValue).toArray();
        }

        static float[] floats(String csv) {
            String[] parts = csv.split(",");
            float[] out = new float[parts.length];
            for (int i = 0; i < parts.length; i++) {
                out[i] = Float.parseFloat(parts[i].trim());
            }
            return out;
        }
    }
}
