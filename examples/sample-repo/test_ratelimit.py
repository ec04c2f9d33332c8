import unittest

from ratelimit import TokenBucket


class TokenBucketTest(unittest.TestCase):
    def test_a_full_bucket_allows_its_burst(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=3)
        self.assertEqual([bucket.allow(0.0) for _ in range(4)], [True, True, True, False])

    def test_tokens_come_back_at_the_rate(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=1)
        self.assertTrue(bucket.allow(0.0))
        self.assertFalse(bucket.allow(0.1))
        self.assertTrue(bucket.allow(0.6))


if __name__ == "__main__":
    unittest.main()
