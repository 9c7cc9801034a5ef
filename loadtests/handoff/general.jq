{
  contact: .person.name,
  note: "\(.person.name) (\(.company.name), \(.company.country)): \(.summary)",
  labels: (.tags | map(select(. != "conference")) | map(ascii_upcase))
}
