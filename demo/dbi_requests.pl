#!/usr/bin/perl
# demo/dbi_requests.pl -- owns the Perl DBI client of scripts/demo: a single-process
# script that, per request, does DBI->connect, one query and disconnect (DBD::mysql,
# which on Debian 12 is built on libmariadb.so.3).  Nothing in here knows about poolshim.
#
# Usage: dbi_requests.pl REQUESTS   (server from PS_TEST_* of scripts/server)
# Prints one line: "tasks=N seconds=S errors=E"; exit 1 if any request failed.
use strict;
use warnings;
use DBI;
use Time::HiRes qw(time);

my $requests = shift // 1000;
die "usage: $0 REQUESTS\n" unless $requests =~ /^\d+$/ && $requests > 0;
for my $v (qw(PS_TEST_HOST PS_TEST_PORT PS_TEST_USER PS_TEST_PASSWORD PS_TEST_DB)) {
    die "$0: $v is not set (source the env file of scripts/server)\n" unless $ENV{$v};
}
my $dsn = "DBI:mysql:database=$ENV{PS_TEST_DB};host=$ENV{PS_TEST_HOST};port=$ENV{PS_TEST_PORT}";

my $errors = 0;
my $start  = time;
for my $i (1 .. $requests) {
    my $ok = eval {
        my $dbh = DBI->connect($dsn, $ENV{PS_TEST_USER}, $ENV{PS_TEST_PASSWORD},
            { RaiseError => 1, PrintError => 0, AutoCommit => 1 });
        my ($n) = $dbh->selectrow_array('SELECT ? + 1', undef, $i);
        $dbh->disconnect;
        die "wrong answer $n for request $i\n" unless defined $n && $n == $i + 1;
        1;
    };
    unless ($ok) {
        $errors++;
        warn "dbi_requests: request $i: $@" if $errors <= 5;
    }
}
printf "tasks=%d seconds=%.4f errors=%d\n", $requests, time - $start, $errors;
exit($errors ? 1 : 0);
